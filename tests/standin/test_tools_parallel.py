"""Several tool calls in one message, and ``auto`` calling tools nobody named (seeded)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from sglang_backend._http import httpx
from tests.standin.conftest import Standin


def tool(name: str, **properties: Any) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


TOOLS = [
    tool("get_weather", city={"type": "string"}),
    tool("get_time", zone={"type": "string", "enum": ["UTC", "CET"]}),
    tool("add", a={"type": "integer"}, b={"type": "integer"}),
]
BOTH = [{"role": "user", "content": "Call get_weather and get_time for Paris."}]


@pytest.fixture
def http(shared: Standin) -> Iterator[httpx.Client]:
    """A plain HTTP client for the shared stand-in."""
    with httpx.Client(base_url=shared.base_url, headers=shared.headers, timeout=30) as client:
        yield client


def chat(http: httpx.Client, messages: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    reply = http.post(
        "/v1/chat/completions", json={"model": "standin-model", "messages": messages, "tools": TOOLS, **body}
    )
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def test_two_named_tools_are_called_in_one_message(http: httpx.Client) -> None:
    choice = chat(http, BOTH)["choices"][0]
    calls = choice["message"]["tool_calls"]
    assert [call["function"]["name"] for call in calls] == ["get_weather", "get_time"]
    assert [call["index"] for call in calls] == [0, 1]
    assert len({call["id"] for call in calls}) == 2
    assert set(json.loads(calls[0]["function"]["arguments"])) == {"city"}
    assert json.loads(calls[1]["function"]["arguments"])["zone"] in {"UTC", "CET"}
    assert choice["finish_reason"] == "tool_calls"


def test_parallel_tool_calls_false_calls_one(http: httpx.Client) -> None:
    calls = chat(http, BOTH, parallel_tool_calls=False)["choices"][0]["message"]["tool_calls"]
    assert [call["function"]["name"] for call in calls] == ["get_weather"]


def test_streamed_parallel_calls_arrive_per_index(http: httpx.Client) -> None:
    body = {"model": "standin-model", "messages": BOTH, "tools": TOOLS, "stream": True}
    names: dict[int, str] = {}
    ids: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish = None
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                finish = choice["finish_reason"] or finish
                for call in choice["delta"].get("tool_calls") or []:
                    index = call["index"]
                    if call["function"]["name"]:
                        assert index not in names  # each name is sent once, first
                        names[index] = call["function"]["name"]
                        ids[index] = call["id"]
                    else:
                        assert index in names
                    arguments[index] = arguments.get(index, "") + call["function"]["arguments"]
    assert names == {0: "get_weather", 1: "get_time"}
    assert len(set(ids.values())) == 2
    assert {index: set(json.loads(text)) for index, text in arguments.items()} == {0: {"city"}, 1: {"zone"}}
    assert finish == "tool_calls"


def called(http: httpx.Client, messages: list[dict[str, Any]], **body: Any) -> bool:
    return bool(chat(http, messages, **body)["choices"][0]["message"].get("tool_calls"))


def test_auto_sometimes_calls_an_unnamed_tool_but_not_after_a_result(http: httpx.Client) -> None:
    plain = [{"role": "user", "content": "What a nice day."}]
    outcomes = [called(http, plain, temperature=1.0, seed=seed) for seed in range(16)]
    assert outcomes == [called(http, plain, temperature=1.0, seed=seed) for seed in range(16)]
    assert any(outcomes)
    assert not all(outcomes)
    assert not any(called(http, plain, temperature=0) for _ in range(3))
    arguments = '{"a": 1, "b": 2}'
    earlier = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": arguments}}
    after = [
        *plain,
        {"role": "assistant", "content": "", "tool_calls": [earlier]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]
    for seed in range(8):
        message = chat(http, after, temperature=1.0, seed=seed)["choices"][0]["message"]
        assert not message.get("tool_calls")
        assert message["content"].startswith("The tool returned: 3.")


def test_invalid_parameters_schema_is_400_in_sglang_words(http: httpx.Client) -> None:
    bad = {"type": "function", "function": {"name": "bad", "parameters": {"type": "objekt"}}}
    reply = http.post(
        "/v1/chat/completions",
        json={"model": "standin-model", "messages": BOTH, "tools": [TOOLS[0], bad]},
    )
    assert reply.status_code == 400
    assert reply.json()["message"].startswith("Tool 1 function has invalid 'parameters' schema: 'objekt'")


def defs_tool(name: str, unit: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"u": {"$ref": "#/$defs/Unit"}}, "$defs": {"Unit": unit}}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


@pytest.mark.parametrize("tool_choice", ["required", "auto"])
def test_conflicting_defs_are_refused_when_a_call_is_forced(http: httpx.Client, tool_choice: str) -> None:
    tools = [defs_tool("a", {"type": "string"}), defs_tool("b", {"type": "integer"})]
    body = {"model": "standin-model", "messages": BOTH, "tools": tools, "tool_choice": tool_choice}
    reply = http.post("/v1/chat/completions", json=body)
    if tool_choice == "auto":
        assert reply.status_code == 200, reply.text
        return
    assert reply.status_code == 400
    assert reply.json()["message"] == "Tool definition 'Unit' has multiple schemas, which is not supported."
    same = [defs_tool("a", {"type": "string"}), defs_tool("b", {"type": "string"})]
    assert http.post("/v1/chat/completions", json={**body, "tools": same}).status_code == 200


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_beyond_the_context_is_400(http: httpx.Client, field: str) -> None:
    body = {"model": "standin-model", "messages": BOTH, field: 10**6}
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400
    wording = "max_completion_tokens is too large: 1000000.This model supports at most"  # sic: no space
    assert reply.json()["message"].startswith(wording)


def test_arguments_fit_a_pattern_the_example_generator_cannot(http: httpx.Client) -> None:
    code = tool("book", code={"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"})
    body = {"model": "standin-model", "messages": BOTH, "tools": [code], "tool_choice": "required"}
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    arguments = json.loads(reply.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert re.fullmatch(r"[A-Z]{3}[0-9]{2}", arguments["code"])
