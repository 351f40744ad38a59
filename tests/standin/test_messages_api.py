"""Anthropic's /v1/messages on the stand-in (real HTTP; the Anthropic SDK is not a dependency)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from sglang_backend._http import httpx
from tests.standin.conftest import Standin, StandinFactory

SERVED = "standin-model"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    factory = StandinFactory(tmp_path_factory.mktemp("messages"))
    try:
        yield factory.launch("--tool-call-parser", "qwen25", "--served-model-name", SERVED,
                             "--context-length", "4096")  # fmt: skip
    finally:
        factory.close()


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    factory = StandinFactory(tmp_path_factory.mktemp("messages-thinking"))
    try:
        yield factory.launch("--reasoning-parser", "qwen3", "--served-model-name", SERVED)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def http(server: Standin) -> Iterator[Any]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def thinking_http(thinker: Standin) -> Iterator[Any]:
    with httpx.Client(base_url=thinker.base_url, headers=thinker.headers, timeout=30) as client:
        yield client


def ask(text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": SERVED, "max_tokens": 200, "messages": [{"role": "user", "content": text}], **extra}


def post(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.post("/v1/messages", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


def events(client: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", "/v1/messages", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200
        text = "".join(reply.iter_text())
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            name, data = block.split("\n")
            payload = json.loads(data.removeprefix("data: "))
            assert name == f"event: {payload['type']}"
            out.append(payload)
    return out


def test_text_message_and_usage(http: Any, server: Standin) -> None:
    body = post(http, ask(system="Be kind."))
    assert body["id"].startswith("msg_")
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == SERVED
    assert body["stop_reason"] == "end_turn"
    assert "stop_sequence" not in body  # SGLang never sets it (None is left out)
    assert [b["type"] for b in body["content"]] == ["text"]
    assert body["content"][0]["text"].startswith("You said: Hello there.")
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello there"}]
    tokens = http.post("/tokenize", json={"messages": messages}).json()["count"]
    assert body["usage"]["input_tokens"] == tokens
    count = http.post("/v1/messages/count_tokens", json={"model": SERVED, "system": "Be kind.",
                                                         "messages": ask()["messages"]})  # fmt: skip
    assert count.json() == {"input_tokens": tokens}


def test_max_tokens_stop_reason(http: Any) -> None:
    body = post(http, {**ask("Tell me a long story about stand-ins"), "max_tokens": 4})
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == 4


def test_tool_use_and_tool_result(http: Any) -> None:
    first = post(http, ask("Use get_weather for Paris", tools=[WEATHER]))
    assert first["stop_reason"] == "tool_use"
    use = [b for b in first["content"] if b["type"] == "tool_use"]
    assert len(use) == 1
    assert use[0]["name"] == "get_weather"
    jsonschema.validate(use[0]["input"], WEATHER["input_schema"])
    history = [
        {"role": "user", "content": "Use get_weather for Paris"},
        {"role": "assistant", "content": first["content"]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use[0]["id"], "content": "sunny"}],
        },
    ]
    second = post(http, {"model": SERVED, "max_tokens": 200, "messages": history, "tools": [WEATHER]})
    assert second["stop_reason"] == "end_turn"
    assert "The tool returned: sunny" in second["content"][0]["text"]


def test_tool_choice(http: Any) -> None:
    forced = post(http, ask("hi", tools=[WEATHER], tool_choice={"type": "any"}))
    assert [b["type"] for b in forced["content"]] == ["tool_use"]
    none = post(http, ask("Use get_weather", tools=[WEATHER], tool_choice={"type": "none"}))
    assert [b["type"] for b in none["content"]] == ["text"]
    unknown = http.post("/v1/messages", json=ask(tools=[WEATHER], tool_choice={"type": "tool", "name": "x"}))
    assert unknown.status_code == 400
    assert unknown.json()["error"]["type"] == "invalid_request_error"
    assert "tool_choice references tool 'x'" in unknown.json()["error"]["message"]
    server_only = [{"type": "web_search_20250305", "name": "web_search"}]
    refused = http.post("/v1/messages", json=ask(tools=server_only, tool_choice={"type": "any"}))
    assert refused.status_code == 400
    assert "requires at least one custom tool" in refused.json()["error"]["message"]


def test_stream_matches_the_plain_answer(http: Any) -> None:
    plain = post(http, ask("Stream me"))
    seen = events(http, ask("Stream me"))
    kinds = [e["type"] for e in seen]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start"
    assert seen[0]["message"]["usage"] == {"input_tokens": plain["usage"]["input_tokens"], "output_tokens": 0}
    text = "".join(e["delta"]["text"] for e in seen if e["type"] == "content_block_delta")
    assert text == plain["content"][0]["text"]
    assert seen[-2]["delta"] == {"stop_reason": "end_turn"}
    assert seen[-2]["usage"] == {"output_tokens": plain["usage"]["output_tokens"]}


def test_stream_tool_use(http: Any) -> None:
    seen = events(http, ask("get_weather in Rome", tools=[WEATHER]))
    starts = [e for e in seen if e["type"] == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use"]
    partial = "".join(e["delta"]["partial_json"] for e in seen if e["type"] == "content_block_delta")
    jsonschema.validate(json.loads(partial), WEATHER["input_schema"])
    assert seen[-2]["delta"] == {"stop_reason": "tool_use"}


def test_thinking_blocks(thinking_http: Any) -> None:
    body = post(thinking_http, ask("Think about it"))
    assert [b["type"] for b in body["content"]] == ["thinking", "text"]
    assert "signature" not in body["content"][0]
    off = post(thinking_http, ask("Think about it", thinking={"type": "disabled"}))
    assert [b["type"] for b in off["content"]] == ["text"]
    seen = events(thinking_http, ask("Think"))
    blocks = [e["content_block"]["type"] for e in seen if e["type"] == "content_block_start"]
    assert blocks == ["thinking", "text"]
    assert [e["index"] for e in seen if e["type"] == "content_block_stop"] == [0, 1]


def test_thinking_needs_a_reasoning_parser(http: Any) -> None:
    reply = http.post("/v1/messages", json=ask(thinking={"type": "enabled", "budget_tokens": 2048}))
    assert reply.status_code == 400
    assert reply.json() == {"type": "error", "error": {"type": "invalid_request_error",
        "message": "Anthropic thinking is not supported for models without a reasoning parser"}}  # fmt: skip


def test_refusals(http: Any, server: Standin) -> None:
    bad = http.post("/v1/messages", json={**ask(), "max_tokens": 0})
    assert bad.status_code == 400
    expected = {
        "type": "invalid_request_error",
        "message": "max_tokens: Value error, max_tokens must be positive",
    }
    assert bad.json()["error"] == expected
    missing = http.post("/v1/messages", json={"model": SERVED, "max_tokens": 5})
    assert missing.json()["error"]["message"] == "messages: Field required"
    form = http.post("/v1/messages", content=b"x", headers={"content-type": "text/plain"})
    assert form.json()["error"]["message"] == (
        "header.content-type: Unsupported Media Type: Only 'application/json' is allowed"
    )
    too_long = http.post("/v1/messages", json={**ask(), "max_tokens": 10_000})
    assert too_long.status_code == 400
    assert too_long.json()["error"]["type"] == "invalid_request_error"
    assert too_long.json()["error"]["message"].startswith("max_completion_tokens is too large")
    anonymous = httpx.post(f"{server.base_url}/v1/messages", json=ask())
    assert anonymous.status_code == 401


def test_output_config_format_constrains_the_answer(http: Any) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    body = post(
        http, ask("Give me a number", output_config={"format": {"type": "json_schema", "schema": schema}})
    )
    jsonschema.validate(json.loads(body["content"][0]["text"]), schema)
