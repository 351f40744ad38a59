"""The stand-in's Anthropic ``/v1/messages``, judged by SGLang 0.5.23's own Anthropic models.

Bodies validate with ``AnthropicMessagesResponse`` (errors with ``AnthropicErrorResponse``,
token counts with ``AnthropicCountTokensResponse``), declare no key the models lack, and
equal what SGLang writes for them (``model_dump(exclude_none=True)``). Stream events validate
with the ``AnthropicStreamEvent`` union, are framed ``event: <type>`` / ``data:`` and equal
SGLang's ``model_dump_json(exclude_none=True)`` of themselves. Requests are checked with
``AnthropicMessagesRequest`` first; bodies it refuses the stand-in refuses too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from sglang.srt.entrypoints.anthropic import protocol as anthropic

from sglang_backend import _http
from tests.standin.conftest import Standin, StandinFactory

from .conftest import judge, sglang_source_says

SERVING = "srt/entrypoints/anthropic/serving.py"
MODEL = "judge-model"
WEATHER = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
EVENTS: TypeAdapter[Any] = TypeAdapter(anthropic.AnthropicStreamEvent)
EVENT_CLASSES = {
    "message_start": anthropic.MessageStartEvent, "message_delta": anthropic.MessageDeltaEvent,
    "message_stop": anthropic.MessageStopEvent, "content_block_start": anthropic.ContentBlockStartEvent,
    "content_block_delta": anthropic.ContentBlockDeltaEvent,
    "content_block_stop": anthropic.ContentBlockStopEvent, "error": anthropic.ErrorEvent,
}  # fmt: skip


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    factory = StandinFactory(tmp_path_factory.mktemp("messages-judge"))
    try:
        yield factory.launch("--tool-call-parser", "qwen25", "--reasoning-parser", "qwen3",
                             "--served-model-name", MODEL, "--context-length", "4096")  # fmt: skip
    finally:
        factory.close()


@pytest.fixture(scope="module")
def client(standin: Standin) -> Iterator[Any]:
    with _http.httpx.Client(base_url=standin.base_url, headers=standin.headers, timeout=30) as http:
        yield http


def ask(text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": text}], **extra}
    anthropic.AnthropicMessagesRequest.model_validate(body)
    return body


def message(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.post("/v1/messages", json=body)
    assert reply.status_code == 200, reply.text
    raw: dict[str, Any] = reply.json()
    parsed = judge(anthropic.AnthropicMessagesResponse, raw)
    assert parsed.model_dump(exclude_none=True) == raw
    return raw


def stream(client: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", "/v1/messages", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200, reply.read()
        text = "".join(reply.iter_text())
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = block.split("\n")
        assert data.startswith("data: ")
        payload = json.loads(data[len("data: ") :])
        assert name == f"event: {payload['type']}"
        event = EVENTS.validate_python(payload)
        judge(EVENT_CLASSES[payload["type"]], payload)
        assert json.loads(event.model_dump_json(exclude_none=True)) == payload
        out.append(payload)
    assert out[0]["type"] == "message_start"
    assert out[-1]["type"] == "message_stop"
    return out


def test_text_message(client: Any) -> None:
    raw = message(client, ask(system=[{"type": "text", "text": "Be kind."}], temperature=0.0))
    assert raw["stop_reason"] == "end_turn"
    assert [b["type"] for b in raw["content"]] == ["thinking", "text"]


def test_max_tokens_and_thinking_off(client: Any) -> None:
    raw = message(client, ask("A long story", max_tokens=3, thinking={"type": "disabled"}))
    assert raw["stop_reason"] == "max_tokens"


def test_tool_use_round_trip(client: Any) -> None:
    first = message(client, ask("Use get_weather for Paris", tools=[WEATHER]))
    assert first["stop_reason"] == "tool_use"
    use = next(b for b in first["content"] if b["type"] == "tool_use")
    history = {"model": MODEL, "max_tokens": 100, "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Use get_weather for Paris"},
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "sunny"}]},
    ]}  # fmt: skip
    anthropic.AnthropicMessagesRequest.model_validate(history)
    message(client, history)


def test_streams(client: Any) -> None:
    text = stream(client, ask("Stream me"))
    assert text[-2]["type"] == "message_delta"
    tools = stream(client, ask("get_weather now", tools=[WEATHER], tool_choice={"type": "auto"}))
    assert "input_json_delta" in [e["delta"]["type"] for e in tools if e["type"] == "content_block_delta"]
    forced = stream(client, ask("anything", tools=[WEATHER], tool_choice={"type": "any"}))
    assert forced[-2]["delta"]["stop_reason"] == "tool_use"


def test_count_tokens(client: Any) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}], "tools": [WEATHER]}
    anthropic.AnthropicCountTokensRequest.model_validate(body)
    reply = client.post("/v1/messages/count_tokens", json=body)
    assert reply.status_code == 200
    judge(anthropic.AnthropicCountTokensResponse, reply.json())


def refusal(reply: Any) -> dict[str, Any]:
    assert reply.status_code == 400, reply.text
    raw: dict[str, Any] = reply.json()
    judge(anthropic.AnthropicErrorResponse, raw)
    assert anthropic.AnthropicErrorResponse.model_validate(raw).model_dump() == raw
    return raw["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
        {"model": "", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        {"model": MODEL, "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]},
        {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "nope"}]}]},
        {
            "model": MODEL,
            "max_tokens": 5,
            "messages": [],
            "thinking": {"type": "enabled", "budget_tokens": 10},
        },
        {"model": MODEL, "max_tokens": 5, "messages": [], "tool_choice": {"type": "sometimes"}},
    ],
)
def test_bad_bodies_refused_like_sglang(client: Any, body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        anthropic.AnthropicMessagesRequest.model_validate(body)
    error = refusal(client.post("/v1/messages", json=body))
    assert error["type"] == "invalid_request_error"
    sglang_source_says("srt/entrypoints/http_server.py", 'parts.append(f"{loc_str}: {msg}")')


def test_conversion_refusals_are_sglangs(client: Any) -> None:
    named_x = {"type": "tool", "name": "x"}
    unknown = refusal(client.post("/v1/messages", json=ask(tools=[WEATHER], tool_choice=named_x)))
    assert unknown["type"] == "invalid_request_error"
    sglang_source_says(SERVING, "is not in the forwarded tools ")
    server_only = ask(
        tools=[{"type": "web_search_20250305", "name": "web_search"}], tool_choice={"type": "any"}
    )
    builtins = refusal(client.post("/v1/messages", json=server_only))
    assert "requires at least one custom " in builtins["message"]
    sglang_source_says(SERVING, "requires at least one custom ")
    redacted = ask()
    redacted["messages"] = [{"role": "user", "content": "hi"},
                            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
                            {"role": "user", "content": "again"}]  # fmt: skip
    anthropic.AnthropicMessagesRequest.model_validate(redacted)
    found = refusal(client.post("/v1/messages", json=redacted))
    assert found["message"] == "Anthropic redacted_thinking history is not supported"
    sglang_source_says(SERVING, found["message"])
