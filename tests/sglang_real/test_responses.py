"""What the stand-in answers, judged by SGLang's own response models.

Every body (and every stream chunk) must validate with SGLang 0.5.23's pydantic model for
that route and declare no key the model lacks. Bad chat requests must be rejected exactly
when SGLang rejects them, with SGLang's 400 body: ``type`` "Bad Request" when the body
fails ``ChatCompletionRequest`` validation, "BadRequestError" with serving_chat's wording
when a serving-level check fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sglang.srt.entrypoints.openai import protocol

from sglang_backend import _http
from tests.standin.conftest import Standin

from .conftest import judge, sglang_source_says

pytestmark = pytest.mark.filterwarnings("ignore:max_tokens is deprecated:DeprecationWarning")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                   "home": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}},
    "required": ["name", "tags", "home"],
}  # fmt: skip


@pytest.fixture(scope="module")
def plain(standin_plain: Standin) -> Iterator[Any]:
    with _http.httpx.Client(base_url=standin_plain.base_url, headers=standin_plain.headers,
                            timeout=30) as client:  # fmt: skip
        yield client


@pytest.fixture(scope="module")
def reasoning(standin_reasoning: Standin) -> Iterator[Any]:
    with _http.httpx.Client(base_url=standin_reasoning.base_url, headers=standin_reasoning.headers,
                            timeout=30) as client:  # fmt: skip
        yield client


def chat(content: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "judge-model", "messages": [{"role": "user", "content": content}], **extra}


def events(client: Any, path: str, body: dict[str, Any]) -> list[Any]:
    """The SSE ``data:`` payloads of a streamed answer; the last must be ``[DONE]``."""
    payloads: list[Any] = []
    with client.stream("POST", path, json=body) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = "".join(reply.iter_text())
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payloads.append(block[len("data: "):])
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


# ------------------------------------------------------------------ chat, non-streaming

NON_STREAM: list[tuple[str, dict[str, Any]]] = [
    ("plain", chat()),
    ("two-choices", chat(n=2, temperature=0.5)),
    ("length", chat(max_tokens=2)),
    ("stop-string", chat("Say stop words", stop=["the"])),
    ("tools-auto", chat("What is the weather in Paris? use get_weather", tools=[WEATHER_TOOL])),
    ("tools-required", chat("Weather?", tools=[WEATHER_TOOL], tool_choice="required")),
    ("tools-named", chat("Weather?", tools=[WEATHER_TOOL],
                         tool_choice={"type": "function", "function": {"name": "get_weather"}})),
    ("tools-none", chat("use get_weather", tools=[WEATHER_TOOL], tool_choice="none")),
    ("json-schema", chat("Describe", response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": SCHEMA}})),
    ("json-object", chat("Describe", response_format={"type": "json_object"})),
    ("logprobs", chat(logprobs=True, top_logprobs=2)),
    ("seeded-choices", chat(n=3, temperature=1.0, seed=5, logprobs=True)),
    ("regex", chat(regex=r"\d{3}-\d{4}")),
    ("ebnf", chat(ebnf='root ::= "yes" | "no"')),
]  # fmt: skip


@pytest.mark.parametrize("body", [c[1] for c in NON_STREAM], ids=[c[0] for c in NON_STREAM])
def test_chat_completion(plain: Any, body: dict[str, Any]) -> None:
    reply = plain.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    raw = reply.json()
    parsed = judge(protocol.ChatCompletionResponse, raw)
    assert parsed.object == "chat.completion"
    assert parsed.model == body["model"]
    assert len(parsed.choices) == body.get("n", 1)
    usage = parsed.usage
    assert usage.total_tokens == usage.prompt_tokens + (usage.completion_tokens or 0)
    choice = parsed.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content is not None  # SGLang sends "" rather than null
    if body.get("tool_choice") in ("required",) or isinstance(body.get("tool_choice"), dict) or (
        body.get("tools") and body.get("tool_choice") != "none"
    ):
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None
        call = choice.message.tool_calls[0]
        assert call.type == "function"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["city"]  # type: ignore[arg-type]
    else:
        assert "tool_calls" not in raw["choices"][0]["message"]
        assert choice.finish_reason in ("stop", "length")
    if "response_format" in body:
        json.loads(choice.message.content)
    if body.get("max_tokens") == 2:
        assert choice.finish_reason == "length"
        assert choice.matched_stop is None
    if body.get("logprobs"):
        assert choice.logprobs is not None
        assert "".join(entry.token for entry in choice.logprobs.content) == choice.message.content
    else:
        assert choice.logprobs is None


def test_parallel_tool_calls(plain: Any) -> None:
    time_tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    body = chat("use get_weather and get_time", tools=[WEATHER_TOOL, time_tool])
    parsed = judge(protocol.ChatCompletionResponse, plain.post("/v1/chat/completions", json=body).json())
    calls = parsed.choices[0].message.tool_calls
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]
    assert [call.index for call in calls] == [0, 1]


def test_chat_completion_with_reasoning(reasoning: Any) -> None:
    raw = reasoning.post("/v1/chat/completions", json=chat("Why is the sky blue?")).json()
    parsed = judge(protocol.ChatCompletionResponse, raw)
    message = parsed.choices[0].message
    assert message.reasoning_content
    assert message.content
    assert parsed.usage.reasoning_tokens
    assert parsed.usage.completion_tokens_details is not None
    assert parsed.usage.completion_tokens_details.reasoning_tokens == parsed.usage.reasoning_tokens
    assert parsed.usage.prompt_tokens_details is not None  # --enable-cache-report


def test_chat_completion_reasoning_off(reasoning: Any) -> None:
    for body in (chat(separate_reasoning=False), chat(reasoning_effort="none"),
                 chat(chat_template_kwargs={"enable_thinking": False})):  # fmt: skip
        raw = reasoning.post("/v1/chat/completions", json=body).json()
        parsed = judge(protocol.ChatCompletionResponse, raw)
        assert parsed.choices[0].message.reasoning_content is None


# ------------------------------------------------------------------ chat, streaming

STREAMS: list[tuple[str, dict[str, Any]]] = [
    ("plain", chat(stream=True)),
    ("usage", chat(stream=True, stream_options={"include_usage": True})),
    ("length", chat(stream=True, max_tokens=3, stream_options={"include_usage": True})),
    ("tools", chat("use get_weather for Paris", stream=True, tools=[WEATHER_TOOL],
                   stream_options={"include_usage": True})),
    ("json-schema", chat(stream=True, response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": SCHEMA}})),
    ("logprobs", chat(stream=True, logprobs=True, top_logprobs=1)),
]  # fmt: skip


def judge_stream(chunks: list[Any], body: dict[str, Any]) -> list[Any]:
    parsed = [judge(protocol.ChatCompletionStreamResponse, chunk) for chunk in chunks]
    for chunk in parsed:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == body["model"]
        assert chunk.id == parsed[0].id
    first = parsed[0].choices[0]
    assert first.delta.role == "assistant"
    assert first.delta.content == ""
    assert first.finish_reason is None
    wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    content_chunks = parsed[:-1] if wants_usage else parsed
    finish = content_chunks[-1].choices[0]
    assert finish.finish_reason in ("stop", "length", "tool_calls")
    for chunk in content_chunks[:-1]:
        assert chunk.choices[0].finish_reason is None
        assert chunk.usage is None
    if wants_usage:
        usage_chunk = parsed[-1]
        assert usage_chunk.choices == []
        assert usage_chunk.usage is not None
        assert usage_chunk.usage.total_tokens == (
            usage_chunk.usage.prompt_tokens + (usage_chunk.usage.completion_tokens or 0)
        )
    return parsed


@pytest.mark.parametrize("body", [c[1] for c in STREAMS], ids=[c[0] for c in STREAMS])
def test_chat_stream(plain: Any, body: dict[str, Any]) -> None:
    parsed = judge_stream(events(plain, "/v1/chat/completions", body), body)
    if body.get("tools"):
        calls = [c.choices[0].delta.tool_calls for c in parsed if c.choices and c.choices[0].delta.tool_calls]
        assert calls[0][0].function.name == "get_weather"
        assert calls[0][0].id
        arguments = "".join(call[0].function.arguments or "" for call in calls)
        assert json.loads(arguments)["city"]
        assert any(c.choices and c.choices[0].finish_reason == "tool_calls" for c in parsed)


def test_chat_stream_with_reasoning(reasoning: Any) -> None:
    body = chat("Why?", stream=True, stream_options={"include_usage": True})
    parsed = judge_stream(events(reasoning, "/v1/chat/completions", body), body)
    thinking = "".join(c.choices[0].delta.reasoning_content or "" for c in parsed if c.choices)
    answer = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    assert thinking
    assert answer


# ------------------------------------------------------------------ /v1/completions


def test_completion(plain: Any) -> None:
    for body in ({"model": "m", "prompt": "Once upon a time"},
                 {"model": "m", "prompt": ["a", "b"], "max_tokens": 4, "echo": True},
                 {"model": "m", "prompt": [1, 2, 3], "n": 2},
                 {"model": "m", "prompt": "Once", "logprobs": 2, "max_tokens": 4, "seed": 1},
                 {"model": "m", "prompt": "Once", "regex": "[0-9]{4}"}):  # fmt: skip
        raw = plain.post("/v1/completions", json=body).json()
        parsed = judge(protocol.CompletionResponse, raw)
        assert parsed.object == "text_completion"
        assert parsed.choices
        assert parsed.choices[0].finish_reason in ("stop", "length")


def test_completion_stream(plain: Any) -> None:
    body = {"model": "m", "prompt": "Once upon a time", "stream": True, "max_tokens": 5,
            "stream_options": {"include_usage": True}}  # fmt: skip
    chunks = events(plain, "/v1/completions", body)
    parsed = [judge(protocol.CompletionStreamResponse, chunk) for chunk in chunks]
    assert all(chunk.object == "text_completion" for chunk in parsed)
    assert parsed[-1].choices == []
    assert parsed[-1].usage is not None
    assert parsed[-2].choices[0].finish_reason == "length"


# ------------------------------------------------------------------ other routes


def test_models(plain: Any) -> None:
    listing = judge(protocol.ModelList, plain.get("/v1/models").json())
    assert listing.object == "list"
    card = listing.data[0]
    assert card.id == "judge-model"
    assert card.owned_by == "sglang"
    assert card.max_model_len == 4096
    judge(protocol.ModelCard, plain.get("/v1/models/judge-model").json())


def test_tokenize_and_detokenize(plain: Any) -> None:
    one = judge(protocol.TokenizeResponse, plain.post("/tokenize", json={"prompt": "Hello world"}).json())
    assert one.count == len(one.tokens)
    assert one.max_model_len == 4096
    many = judge(protocol.TokenizeResponse, plain.post("/v1/tokenize", json={"prompt": ["a b", "c"]}).json())
    assert isinstance(many.count, list)
    messages = {"messages": [{"role": "user", "content": "Hi"}]}
    judge(protocol.TokenizeResponse, plain.post("/tokenize", json=messages).json())
    text = judge(protocol.DetokenizeResponse, plain.post("/detokenize", json={"tokens": one.tokens}).json())
    assert text.text == "Hello world"
    texts = judge(protocol.DetokenizeResponse,
                  plain.post("/v1/detokenize", json={"tokens": many.tokens}).json())  # fmt: skip
    assert isinstance(texts.text, list)


def test_unauthorized(standin_plain: Standin) -> None:
    with _http.httpx.Client(base_url=standin_plain.base_url, timeout=10) as anon:
        reply = anon.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 401
    assert reply.json() == {"error": "Unauthorized"}
    # SGLang's auth middleware answers with this literal body, not an ErrorResponse.
    sglang_source_says("srt/utils/auth.py", '"error": (\n                            "Unauthorized"')


def test_context_too_long_is_an_error_response(plain: Any) -> None:
    reply = plain.post("/v1/chat/completions", json=chat("word " * 5000))
    assert reply.status_code == 400
    error = judge(protocol.ErrorResponse, reply.json())
    assert error.code == 400
    assert "context length" in error.message


# ------------------------------------------------------------------ bad requests: SGLang decides

GOOD = [{"role": "user", "content": "hi"}]
BAD: list[tuple[str, dict[str, Any]]] = [
    ("unknown-role", {"messages": [{"role": "wizard", "content": "hi"}]}),
    ("upper-case-user", {"messages": [{"role": "USER", "content": "hi"}]}),
    ("upper-case-system-ok", {"messages": [{"role": "System", "content": "hi"}, *GOOD]}),
    ("no-messages-key", {}),
    ("messages-not-a-list", {"messages": "hi"}),
    ("empty-messages", {"messages": []}),
    ("user-null-content", {"messages": [{"role": "user", "content": None}]}),
    ("bad-part-type", {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}),
    ("bad-tool-choice", {"messages": GOOD, "tool_choice": "sometimes", "tools": [WEATHER_TOOL]}),
    ("required-without-tools", {"messages": GOOD, "tool_choice": "required"}),
    ("named-without-tools", {"messages": GOOD,
                             "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ("named-unknown-tool", {"messages": GOOD, "tools": [WEATHER_TOOL],
                            "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    ("named-without-name", {"messages": GOOD, "tools": [WEATHER_TOOL],
                            "tool_choice": {"type": "function", "function": {}}}),
    ("tool-without-function", {"messages": GOOD, "tools": [{"type": "function"}]}),
    ("bad-response-format", {"messages": GOOD, "response_format": {"type": "yaml"}}),
    ("json-schema-without-name", {"messages": GOOD, "response_format": {
        "type": "json_schema", "json_schema": {"schema": {"type": "object"}}}}),
    ("json-schema-without-schema", {"messages": GOOD, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x"}}}),
    ("max-tokens-not-int", {"messages": GOOD, "max_tokens": "many"}),
    ("stream-not-bool", {"messages": GOOD, "stream": "perhaps"}),
]  # fmt: skip

# serving_chat.OpenAIServingChat._validate_request (0.5.23), checked against its source below.
SERVING_CHECKS = [
    (lambda r: not r.messages, "Messages cannot be empty."),
    (lambda r: r.tool_choice == "required" and not r.tools,
     "Tools cannot be empty if tool choice is set to required."),
    (lambda r: not isinstance(r.tool_choice, str) and not r.tools,
     "Tools cannot be empty if tool choice is set to a specific tool."),
    (lambda r: not isinstance(r.tool_choice, str)
     and all(t.function.name != r.tool_choice.function.name for t in r.tools),
     "Tool '{name}' not found in tools list."),
    (lambda r: r.response_format is not None and r.response_format.type == "json_schema"
     and getattr(r.response_format.json_schema, "schema_", None) is None,
     "schema_ is required for json_schema response format request."),
]  # fmt: skip


def sglang_verdict(body: dict[str, Any]) -> tuple[int, str | None, str | None]:
    """(status, error type, message) SGLang 0.5.23 gives this chat body (before generation)."""
    try:
        request = protocol.ChatCompletionRequest.model_validate(body)
    except ValueError:
        return 400, "Bad Request", None
    if isinstance(request.response_format, dict):
        # Without xgrammar (not installable here) SGLang's StructuralTag is ``Any``, so a
        # response_format matching neither ResponseFormat nor the legacy structural tag
        # lands there as a plain dict. The real server's xgrammar StructuralTag accepts
        # only type "structural_tag": anything else is a body validation error.
        assert protocol.StructuralTag is Any
        if request.response_format.get("type") != "structural_tag":
            return 400, "Bad Request", None
    for failed, message in SERVING_CHECKS:
        if failed(request):
            name = getattr(getattr(request.tool_choice, "function", None), "name", None)
            return 400, "BadRequestError", message.replace("{name}", str(name))
    return 200, None, None


def test_serving_check_wording_is_sglangs() -> None:
    for _check, message in SERVING_CHECKS:
        literal = message.replace("'{name}'", "'{tool_name}'")
        sglang_source_says("srt/entrypoints/openai/serving_chat.py", literal)


@pytest.mark.parametrize("body", [c[1] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_requests_rejected_like_sglang(plain: Any, body: dict[str, Any]) -> None:
    status, kind, message = sglang_verdict({"model": "m", **body})
    reply = plain.post("/v1/chat/completions", json={"model": "m", **body})
    assert reply.status_code == status, reply.text
    if status == 200:
        judge(protocol.ChatCompletionResponse, reply.json())
        return
    error = judge(protocol.ErrorResponse, reply.json())
    assert error.object == "error"
    assert error.code == 400
    assert error.type == kind
    if message is not None:
        assert error.message == message
    else:
        assert "validation error" in error.message


def test_wrong_content_type_is_bad_request(plain: Any) -> None:
    reply = plain.post("/v1/chat/completions", content=json.dumps(chat()),
                       headers={"content-type": "text/plain"})  # fmt: skip
    assert reply.status_code == 400
    error = judge(protocol.ErrorResponse, reply.json())
    assert error.type == "Bad Request"
    sglang_source_says("srt/entrypoints/http_server.py",
                       "Unsupported Media Type: Only 'application/json' is allowed")  # fmt: skip
