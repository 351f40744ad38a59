"""The stand-in's ``/v1/responses``, judged by SGLang 0.5.23's own Responses models.

Every body must validate with ``protocol.ResponsesResponse`` (its usage, which SGLang
serializes in the Responses shape, with the OpenAI SDK's ``ResponseUsage`` that SGLang's
serializer targets), declare no key the models lack, and come back unchanged when SGLang's
model serializes it again. Every stream event must validate with the OpenAI SDK type
SGLang builds it from (lifecycle events with ``ResponsesLifecycleEvent``, message items with
SGLang's ``ResponseOutputMessage`` and its ``phase``), carry a type SGLang's
serving_responses emits, and be framed ``event: <type>`` / ``data: …`` numbered from 0.
Requests are SGLang's ``ResponsesRequest``; what the stand-in echoes of them (tool_choice,
text, reasoning) and the token budget are what that model computes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types import responses as oa
from pydantic import BaseModel, ValidationError
from sglang.srt.entrypoints.openai import protocol

from sglang_backend import _http
from tests.standin.conftest import MODEL as BASE_MODEL
from tests.standin.conftest import Standin, StandinFactory

from .conftest import judge, sglang_source_says

SERVING = "srt/entrypoints/openai/serving_responses.py"
MODEL = "judge-model"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
LIFECYCLE = {"response.created", "response.in_progress", "response.completed", "response.incomplete",
             "response.failed"}  # fmt: skip
_EVENT_CLASSES: list[type[BaseModel]] = [
    oa.ResponseOutputItemAddedEvent, oa.ResponseOutputItemDoneEvent, oa.ResponseContentPartAddedEvent,
    oa.ResponseContentPartDoneEvent, oa.ResponseTextDeltaEvent, oa.ResponseTextDoneEvent,
    oa.ResponseReasoningTextDeltaEvent, oa.ResponseReasoningTextDoneEvent,
    oa.ResponseReasoningSummaryPartAddedEvent, oa.ResponseReasoningSummaryPartDoneEvent,
    oa.ResponseReasoningSummaryTextDeltaEvent, oa.ResponseReasoningSummaryTextDoneEvent,
    oa.ResponseFunctionCallArgumentsDeltaEvent, oa.ResponseFunctionCallArgumentsDoneEvent,
]  # fmt: skip
EVENTS = {cls.model_fields["type"].annotation.__args__[0]: cls for cls in _EVENT_CLASSES}  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """Tool-call parser and response store on."""
    factory = StandinFactory(tmp_path_factory.mktemp("responses-judge"))
    try:
        yield factory.launch("--tool-call-parser", "qwen25", "--enable-response-store",
                             "--served-model-name", MODEL, "--context-length", "4096")  # fmt: skip
    finally:
        factory.close()


@pytest.fixture(scope="module")
def plain(stored: Standin) -> Iterator[Any]:
    with _http.httpx.Client(base_url=stored.base_url, headers=stored.headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def reasoning(standin_reasoning: Standin) -> Iterator[Any]:
    with _http.httpx.Client(base_url=standin_reasoning.base_url, headers=standin_reasoning.headers,
                            timeout=30) as client:  # fmt: skip
        yield client


def request(prompt: Any = "Hello there", **extra: Any) -> dict[str, Any]:
    """A request body, checked against SGLang's ResponsesRequest first."""
    body = {"model": MODEL, "input": prompt, **extra}
    protocol.ResponsesRequest.model_validate(body)
    return body


def judge_response(raw: dict[str, Any]) -> protocol.ResponsesResponse:
    """Validate a response object; SGLang's model must serialize it back unchanged.

    ``usage`` is rebuilt as the ``UsageInfo`` SGLang fills from the engine's counts, so
    its Responses-shape serializer says what the key set and values must be.
    """
    body = dict(raw)
    usage = body.pop("usage")
    parsed = judge(protocol.ResponsesResponse, body)
    if usage is not None:
        parsed.usage = protocol.UsageInfo(
            prompt_tokens=usage["input_tokens"],
            completion_tokens=usage["output_tokens"],
            total_tokens=usage["input_tokens"] + usage["output_tokens"],
            reasoning_tokens=usage["output_tokens_details"]["reasoning_tokens"],
        )
    assert parsed.model_dump(mode="json", by_alias=True) == raw
    return parsed  # type: ignore[no-any-return]


def judge_event(event: dict[str, Any]) -> None:
    kind = event["type"]
    if kind in LIFECYCLE:
        judge_response(event["response"])
        judge(protocol.ResponsesLifecycleEvent, {**event, "response": {**event["response"], "usage": None}})
        return
    sglang_source_says(SERVING, f'type="{kind}"')  # an event type SGLang emits
    item = event.get("item")
    if isinstance(item, dict) and item.get("type") == "message":
        judge(protocol.ResponseOutputMessage, item)
        event = {**event, "item": {k: v for k, v in item.items() if k != "phase"}}
    judge(EVENTS[kind], event)


def create(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text
    raw: dict[str, Any] = reply.json()
    judge_response(raw)
    return raw


def stream(client: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed response, each judged; framing checked."""
    with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = "".join(reply.iter_text())
    events: list[dict[str, Any]] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = block.split("\n")
        assert name.startswith("event: "), block
        assert data.startswith("data: "), block
        payload = json.loads(data[len("data: ") :])
        assert payload["type"] == name[len("event: ") :]
        judge_event(payload)
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] in LIFECYCLE - {"response.created", "response.in_progress"}
    return events


def test_text_response(plain: Any) -> None:
    body = request(instructions="Answer briefly.", max_output_tokens=100, metadata={"k": "v"})
    raw = create(plain, body)
    assert raw["status"] == "completed"
    assert raw["text"] == {"format": {"type": "text"}}  # text-only output
    assert raw["metadata"] == {"k": "v"}


def test_token_budget_is_sglangs(plain: Any) -> None:
    body = request("Tell me a long story about stand-ins", max_output_tokens=7)
    raw = create(plain, body)
    budget = protocol.ResponsesRequest.model_validate(body).to_sampling_params()["max_new_tokens"]
    assert raw["status"] == "incomplete"
    assert raw["incomplete_details"] == {"reason": "max_output_tokens"}
    assert raw["usage"]["output_tokens"] == budget


def test_echoed_request_fields_are_sglangs(plain: Any) -> None:
    fmt = {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object",
           "properties": {"n": {"type": "integer"}}, "required": ["n"]}, "strict": True}}  # fmt: skip
    # a built-in tool choice cannot be forced: SGLang echoes "auto"
    body = request(text=fmt, reasoning={"effort": "low"}, tools=[WEATHER], tool_choice={"type": "web_search"})
    raw = create(plain, body)
    sglang = protocol.ResponsesRequest.model_validate(body)
    assert raw["text"] == sglang.text.model_dump(by_alias=True, exclude_none=True)  # type: ignore[union-attr]
    assert raw["tool_choice"] == sglang.effective_tool_choice() == "auto"
    assert raw["reasoning"] == {"effort": "low", "summary": None}
    assert raw["tools"] == [t.model_dump() for t in sglang.tools]
    json.loads(raw["output"][0]["content"][0]["text"])


def test_tool_calls(plain: Any) -> None:
    raw = create(plain, request("Use get_weather for Paris", tools=[WEATHER]))
    assert [i["type"] for i in raw["output"]] == ["function_call"]
    call = raw["output"][0]
    named = create(
        plain, request("hi", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"})
    )
    assert named["tool_choice"] == {"type": "function", "name": "get_weather"}
    follow = [
        {"role": "user", "content": "Use get_weather for Paris"},
        call,
        {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"},
    ]
    answer = create(plain, request(follow, tools=[WEATHER]))
    assert answer["output"][0]["type"] == "message"


def test_output_logprobs(plain: Any) -> None:
    raw = create(plain, request(include=["message.output_text.logprobs"], top_logprobs=2))
    assert raw["output"][0]["content"][0]["logprobs"]


def test_streamed_text(plain: Any) -> None:
    events = stream(plain, request(max_output_tokens=100))
    assert events[-1]["type"] == "response.completed"


def test_streamed_incomplete(plain: Any) -> None:
    events = stream(plain, request("A long story please", max_output_tokens=5))
    assert events[-1]["type"] == "response.incomplete"


def test_streamed_tool_call(plain: Any) -> None:
    events = stream(plain, request("get_weather in Rome", tools=[WEATHER]))
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds
    # tools offered, none called: the message events are held back, then sent as final_answer
    held = stream(plain, request("Just talk to me", tools=[WEATHER]))
    assert [e["item"]["phase"] for e in held if e["type"] == "response.output_item.added"] == ["final_answer"]


def test_reasoning(reasoning: Any) -> None:
    raw = create(reasoning, request("Think about it", model=BASE_MODEL))
    assert [i["type"] for i in raw["output"]] == ["reasoning", "message"]
    summary = create(reasoning, request("Think", model=BASE_MODEL, reasoning={"summary": "auto"}))
    assert summary["output"][0]["summary"]
    events = stream(reasoning, request("Think and stream", model=BASE_MODEL))
    assert "response.reasoning_text.delta" in [e["type"] for e in events]
    summarized = stream(reasoning, request("Think", model=BASE_MODEL, reasoning={"summary": "detailed"}))
    assert "response.reasoning_summary_text.delta" in [e["type"] for e in summarized]


def test_store_retrieve_cancel(plain: Any) -> None:
    first = create(plain, request("My name is Ada"))
    got = plain.get(f"/v1/responses/{first['id']}")
    assert got.status_code == 200
    assert judge_response(got.json()).id == first["id"]
    assert got.json() == first
    chained = create(plain, request("And my name?", previous_response_id=first["id"]))
    assert chained["previous_response_id"] == first["id"]
    queued = create(plain, request("In the background", background=True))
    assert queued["status"] == "queued"
    deadline = time.monotonic() + 30
    while (done := plain.get(f"/v1/responses/{queued['id']}").json())["status"] in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    judge_response(done)
    cancel = plain.post(f"/v1/responses/{first['id']}/cancel")
    assert cancel.status_code == 200
    judge_response(cancel.json())


def error(client: Any, reply: Any, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == status
    return body["error"]  # type: ignore[no-any-return]


PROTOCOL = "srt/entrypoints/openai/protocol.py"
NAMED_ZZZ = {"type": "function", "name": "zzz"}
JSON_OBJECT = {"format": {"type": "json_object"}}
REFUSALS = [
    (request(model="nope"), 404, "does not exist", SERVING),
    (request(tool_choice="required"), 400, 'tool_choice="required" requires at least one tool', SERVING),
    (request(tools=[WEATHER], tool_choice=NAMED_ZZZ), 400, "is not declared in tools", SERVING),
    (request(stream=True, include=["message.output_text.logprobs"]), 400,
     "logprobs are not supported in streaming mode", SERVING),
    (request(background=True, store=False), 400, "background=true requires store=true.", SERVING),
    (request(tools=[{"type": "shell"}]), 400, "Shell tools are not supported by this model", SERVING),
    (request([{"type": "bogus"}]), 400, "Unsupported Responses API input item type: ", SERVING),
    (request(previous_response_id="resp_unknown"), 404, "not found.", SERVING),
    (request(tools=[WEATHER], tool_choice="required", text=JSON_OBJECT), 400,
     "Cannot combine tool calls with constrained decoding", PROTOCOL),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "wording", "source"), REFUSALS)
def test_refusal_wording_is_sglangs(
    plain: Any, body: dict[str, Any], status: int, wording: str, source: str
) -> None:
    found = error(plain, plain.post("/v1/responses", json=body), status)
    assert wording in found["message"]
    sglang_source_says(source, wording)


def test_store_refusals(plain: Any, reasoning: Any) -> None:
    off = error(reasoning, reasoning.get("/v1/responses/resp_x"), 400)
    assert off["param"] == "response_id"
    sglang_source_says(SERVING, "Response store is disabled. Stateful Responses require")
    bad_id = error(plain, plain.get("/v1/responses/abc"), 400)
    assert bad_id["message"].endswith("Expected an ID that begins with 'resp'.")


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL},
        {"model": MODEL, "input": "x", "tools": [{"type": "function"}]},
        {"model": MODEL, "input": "x", "tools": [{"type": "nope", "name": "a"}]},
        {"model": MODEL, "input": "x", "reasoning": {"effort": "huge"}},
        {"model": MODEL, "input": "x", "truncation": "sometimes"},
    ],
)
def test_bad_bodies_refused_like_sglang(plain: Any, body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        protocol.ResponsesRequest.model_validate(body)
    found = error(plain, plain.post("/v1/responses", json=body), 400)
    assert found["type"] == "Bad Request"


@pytest.fixture
def slow(tmp_path: Path) -> Iterator[Standin]:
    factory = StandinFactory(tmp_path)
    try:
        yield factory.launch("--served-model-name", MODEL, "--standin-token-delay", "0.05")
    finally:
        factory.close()


def test_aborted_stream_fails(slow: Standin) -> None:
    rid = "resp_" + "b" * 32
    with _http.httpx.Client(base_url=slow.base_url, headers=slow.headers, timeout=30) as client:
        body = {**request("Abort me " * 10), "request_id": rid, "stream": True}
        with client.stream("POST", "/v1/responses", json=body) as reply:
            chunks = reply.iter_text()
            text = next(chunks)
            assert client.post("/abort_request", json={"rid": rid}).status_code == 200
            text += "".join(chunks)
    last = json.loads(text.strip().split("\n\n")[-1].split("\n")[1][len("data: ") :])
    judge_event(last)
    assert last["type"] == "response.failed"
    assert last["response"]["error"]["code"] == "server_error"
