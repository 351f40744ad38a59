"""Tool calls in each ``--tool-call-parser``'s wire format, through the real openai SDK.

The parsed calls must be the same whatever the format (streamed and not, several in one
message); the raw text (visible through the chat ``logprobs`` tokens) must be the
format's; an unknown parser name stops the stand-in at start as SGLang's argparse does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.standin.conftest import Standin, StandinFactory

PARSERS = ["qwen25", "hermes", "llama3", "mistral", "deepseekv3", "pythonic", "kimi_k2", "gpt-oss"]
MARKERS = {
    "qwen25": '<tool_call>\n{"name": "get_weather", "arguments": {',
    "hermes": '<tool_call>{"name": "get_weather", "arguments": {',
    "llama3": '<|python_tag|>{"name": "get_weather", "parameters": {',
    "mistral": "[TOOL_CALLS]get_weather[ARGS]{",
    "deepseekv3": "function<\uff5ctool\u2581sep\uff5c>get_weather\n```json\n{",
    "pythonic": "[get_weather(city=",
    "kimi_k2": "<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{",
    "gpt-oss": "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{",
}


def tool(name: str, **properties: Any) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


TOOLS: list[Any] = [
    tool("get_weather", city={"type": "string"}),
    tool("get_time", zone={"type": "string", "enum": ["UTC", "CET"]}),
    tool("add", a={"type": "integer", "minimum": 0}, b={"type": "integer", "minimum": 0}),
]
ASK: list[Any] = [{"role": "user", "content": "Call get_weather, get_time and add, please."}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Standin]]:
    factory = StandinFactory(tmp_path_factory.mktemp("formats"))
    try:
        yield {parser: factory.launch("--tool-call-parser", parser) for parser in PARSERS}
    finally:
        factory.close()


def client(server: Standin) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)


@pytest.mark.parametrize("parser", PARSERS)
def test_parallel_calls_parse_the_same_in_every_format(servers: dict[str, Standin], parser: str) -> None:
    with client(servers[parser]) as sdk:
        reply = sdk.chat.completions.create(model="m", messages=ASK, tools=TOOLS, logprobs=True)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time", "add"]  # type: ignore[union-attr]
    arguments = [json.loads(c.function.arguments) for c in calls]  # type: ignore[union-attr]
    assert set(arguments[0]) == {"city"}
    assert arguments[1]["zone"] in {"UTC", "CET"}
    assert all(isinstance(arguments[2][k], int) for k in ("a", "b"))
    assert not choice.message.content
    assert choice.logprobs is not None
    assert choice.logprobs.content is not None
    raw = "".join(entry.token for entry in choice.logprobs.content)
    assert MARKERS[parser] in raw
    for other, marker in MARKERS.items():
        if marker.split("get_weather")[0] not in MARKERS[parser]:
            assert marker not in raw, other
    if parser == "kimi_k2":
        assert [c.id for c in calls] == ["functions.get_weather:0", "functions.get_time:1", "functions.add:2"]
    else:
        assert all(c.id.startswith("call_") and len(c.id) == 29 for c in calls)


@pytest.mark.parametrize("parser", PARSERS)
def test_streamed_calls_add_up_to_the_plain_answer(servers: dict[str, Standin], parser: str) -> None:
    with client(servers[parser]) as sdk:
        plain = sdk.chat.completions.create(model="m", messages=ASK, tools=TOOLS, seed=1)
        names: dict[int, str] = {}
        arguments: dict[int, str] = {}
        finish = None
        content = ""
        with sdk.chat.completions.create(model="m", messages=ASK, tools=TOOLS, seed=1, stream=True) as stream:
            for chunk in stream:
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    content += choice.delta.content or ""
                    for call in choice.delta.tool_calls or []:
                        if call.function and call.function.name:
                            assert call.index not in names  # the name comes once, first
                            assert call.id
                            names[call.index] = call.function.name
                        else:
                            assert call.index in names
                        arguments[call.index] = arguments.get(call.index, "") + (
                            (call.function.arguments if call.function else None) or ""
                        )
    expected = plain.choices[0].message.tool_calls or []
    assert finish == "tool_calls"
    assert content == ""
    assert [names[i] for i in sorted(names)] == [c.function.name for c in expected]  # type: ignore[union-attr]
    assert [arguments[i] for i in sorted(arguments)] == [c.function.arguments for c in expected]  # type: ignore[union-attr]


def test_kimi_ids_count_the_calls_already_made(servers: dict[str, Standin]) -> None:
    earlier = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "functions.get_time:0",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            }
        ],
    }
    result = {"role": "tool", "tool_call_id": "functions.get_time:0", "content": "9"}
    messages: list[Any] = [*ASK, earlier, result, {"role": "user", "content": "Now call get_weather."}]
    with client(servers["kimi_k2"]) as sdk:
        calls = (
            sdk.chat.completions.create(model="m", messages=messages, tools=TOOLS)
            .choices[0]
            .message.tool_calls
        )
    assert [c.id for c in calls or []] == ["functions.get_weather:1"]


def test_an_unknown_parser_stops_the_standin_like_sglangs_argparse(tmp_path: Any) -> None:
    factory = StandinFactory(tmp_path)
    try:
        server = factory.launch("--tool-call-parser", "no-such-parser", wait=False)
        assert server.proc.wait(timeout=30) == 2
        stderr = server.stderr()
        assert "argument --tool-call-parser: invalid choice: 'no-such-parser'" in stderr
        assert "'qwen25'" in stderr
        assert "'kimi_k2'" in stderr
    finally:
        factory.close()
