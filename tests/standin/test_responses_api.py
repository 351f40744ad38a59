"""/v1/responses on the stand-in, driven by the real OpenAI SDK (``client.responses``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from sglang_backend._http import httpx
from tests.standin.conftest import Standin, StandinFactory

SERVED = "standin-model"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {
    "type": "function",
    "name": "get_time",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """Tool-call parser on, response store on."""
    factory = StandinFactory(tmp_path_factory.mktemp("responses"))
    try:
        yield factory.launch("--tool-call-parser", "qwen25", "--enable-response-store",
                             "--served-model-name", SERVED, "--context-length", "4096")  # fmt: skip
    finally:
        factory.close()


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """Reasoning parser on, no response store (SGLang's default)."""
    factory = StandinFactory(tmp_path_factory.mktemp("responses-thinking"))
    try:
        yield factory.launch("--reasoning-parser", "qwen3", "--served-model-name", SERVED)
    finally:
        factory.close()


def client_for(standin: Standin) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{standin.base_url}/v1", api_key=standin.api_key, max_retries=0)


@pytest.fixture(scope="module")
def client(server: Standin) -> Iterator[openai.OpenAI]:
    with client_for(server) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def thinking_client(thinker: Standin) -> Iterator[openai.OpenAI]:
    with client_for(thinker) as sdk:
        yield sdk


def prompt_tokens(standin: Standin, messages: list[dict[str, Any]]) -> int:
    reply = httpx.post(f"{standin.base_url}/tokenize", json={"messages": messages}, headers=standin.headers)
    return int(reply.json()["count"])


def test_text_answer_instructions_and_usage(client: openai.OpenAI, server: Standin) -> None:
    r = client.responses.create(model=SERVED, input="Hello there", instructions="Answer briefly.",
                                max_output_tokens=200)  # fmt: skip
    assert r.id.startswith("resp_")
    assert r.status == "completed"
    assert r.model == SERVED
    assert r.instructions == "Answer briefly."
    assert r.output_text.startswith("You said: Hello there.")
    assert [item.type for item in r.output] == ["message"]
    assert r.output[0].id.startswith("msg_")
    assert r.text is not None
    assert r.text.format.type == "text"
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there"}]
    assert r.usage is not None
    assert r.usage.input_tokens == prompt_tokens(server, messages)
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0


def test_max_output_tokens_keeps_two_tokens_of_headroom(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=SERVED, input="Tell me a long story about stand-ins", max_output_tokens=6
    )
    assert r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None
    assert r.usage.output_tokens == 4  # SGLang budgets max_output_tokens - 2


def test_input_items_tool_call_and_its_result(client: openai.OpenAI) -> None:
    question = {"role": "user", "content": [{"type": "input_text", "text": "Use get_weather for Paris"}]}
    r = client.responses.create(model=SERVED, input=[question], tools=[WEATHER])  # type: ignore[list-item]
    calls = [item for item in r.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.call_id.startswith("call_")
    assert call.id is not None
    assert call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    follow = client.responses.create(
        model=SERVED,
        tools=[WEATHER],  # type: ignore[list-item]
        input=[
            question,
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny and warm"},
        ],
    )
    assert "The tool returned: sunny and warm" in follow.output_text
    assert not [item for item in follow.output if item.type == "function_call"]


def test_parallel_calls_and_their_limit(client: openai.OpenAI) -> None:
    ask = "Call get_weather and get_time please"
    both = client.responses.create(model=SERVED, input=ask, tools=[WEATHER, TIME])  # type: ignore[list-item]
    assert [i.name for i in both.output if i.type == "function_call"] == ["get_weather", "get_time"]
    one = client.responses.create(model=SERVED, input=ask, tools=[WEATHER, TIME],  # type: ignore[list-item]
                                  parallel_tool_calls=False)  # fmt: skip
    assert [i.name for i in one.output if i.type == "function_call"] == ["get_weather"]
    named = client.responses.create(model=SERVED, input="hi", tools=[WEATHER, TIME],  # type: ignore[list-item]
                                    tool_choice={"type": "function", "name": "get_time"})  # fmt: skip
    assert [i.name for i in named.output if i.type == "function_call"] == ["get_time"]
    assert named.tool_choice.type == "function"  # type: ignore[union-attr]


def test_stream_events_build_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.create(model=SERVED, input="Stream this please", stream=True) as events:
        seen = list(events)
    kinds = [e.type for e in seen]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    assert kinds[2:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    text = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    final = seen[-1].response  # type: ignore[union-attr]
    assert final.output_text == text
    assert text.startswith("You said: Stream this please.")
    done = [e for e in seen if e.type == "response.output_text.done"]
    assert len(done) == 1
    assert done[0].text == text
    assert final.usage is not None
    assert final.usage.output_tokens > 0


def test_stream_tool_call_arguments(client: openai.OpenAI) -> None:
    with client.responses.create(model=SERVED, input="get_weather in Rome", tools=[WEATHER],  # type: ignore[list-item]
                                 stream=True) as events:  # fmt: skip
        seen = list(events)
    deltas = "".join(e.delta for e in seen if e.type == "response.function_call_arguments.delta")
    done = [e for e in seen if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1
    assert done[0].arguments == deltas
    final = seen[-1].response  # type: ignore[union-attr]
    assert final.output[0].type == "function_call"
    assert final.output[0].arguments == deltas
    jsonschema.validate(json.loads(deltas), WEATHER["parameters"])


def test_json_schema_text_format(client: openai.OpenAI) -> None:
    fmt = {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}
    r = client.responses.create(model=SERVED, input="Who are you?", text=fmt)  # type: ignore[arg-type]
    jsonschema.validate(json.loads(r.output_text), PERSON)
    assert r.text is not None
    assert r.text.format.type == "json_schema"
    obj = client.responses.create(model=SERVED, input="json please", text={"format": {"type": "json_object"}})
    assert isinstance(json.loads(obj.output_text), dict)


def test_output_logprobs(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=SERVED, input="Hi", include=["message.output_text.logprobs"], top_logprobs=2
    )
    part = r.output[0].content[0]  # type: ignore[union-attr]
    assert part.logprobs
    assert "".join(lp.token for lp in part.logprobs) == part.text
    assert all(lp.logprob <= 0 for lp in part.logprobs)
    assert r.usage is not None
    assert len(part.logprobs) == r.usage.output_tokens - 1  # the EOS token carries no text


def test_refusals(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="no-such-model", input="hi")
    assert missing.value.body["message"] == "The model 'no-such-model' does not exist"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as required:
        client.responses.create(model=SERVED, input="hi", tool_choice="required")
    assert 'tool_choice="required" requires at least one tool' in required.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as undeclared:
        client.responses.create(model=SERVED, input="hi", tools=[WEATHER],  # type: ignore[list-item]
                                tool_choice={"type": "function", "name": "nope"})  # fmt: skip
    assert undeclared.value.body["param"] == "tool_choice"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as streamed:
        client.responses.create(
            model=SERVED, input="hi", stream=True, include=["message.output_text.logprobs"]
        )
    assert streamed.value.body["message"] == "logprobs are not supported in streaming mode"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as item:
        client.responses.create(model=SERVED, input=[{"type": "bogus"}])  # type: ignore[list-item]
    assert item.value.body["message"] == "Unsupported Responses API input item type: 'bogus' None"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as invalid:
        client.responses.create(model=SERVED, input="hi", tools=[{"type": "function"}])  # type: ignore[list-item]
    assert invalid.value.body["type"] == "Bad Request"  # type: ignore[index]
    assert "Function tools must include a name." in invalid.value.body["message"]  # type: ignore[index]


def test_raw_error_body_is_nested(server: Standin) -> None:
    reply = httpx.post(f"{server.base_url}/v1/responses", headers=server.headers,
                       json={"model": SERVED, "input": "hi", "tool_choice": "required"})  # fmt: skip
    assert reply.status_code == 400
    body = reply.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == 400
    assert body["error"]["param"] is None


def test_store_retrieve_and_chain(client: openai.OpenAI) -> None:
    first = client.responses.create(model=SERVED, input="My name is Ada")
    again = client.responses.retrieve(first.id)
    assert again.model_dump() == first.model_dump()
    second = client.responses.create(model=SERVED, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert second.output_text.startswith("You said: What is my name?")
    alone = client.responses.create(model=SERVED, input="What is my name?")
    assert second.usage is not None
    assert alone.usage is not None
    assert second.usage.input_tokens > alone.usage.input_tokens  # the first turn is in the prompt
    assert client.responses.cancel(first.id).status == "completed"  # already finished: unchanged
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.retrieve("abc")
    message = bad.value.body["message"]  # type: ignore[index]
    assert message == "Invalid 'response_id': 'abc'. Expected an ID that begins with 'resp'."
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=SERVED, input="x", previous_response_id="resp_missing")


def test_store_is_off_by_default(thinking_client: openai.OpenAI) -> None:
    r = thinking_client.responses.create(model=SERVED, input="hi")
    with pytest.raises(openai.BadRequestError) as off:
        thinking_client.responses.retrieve(r.id)
    assert off.value.body["message"].startswith("Response store is disabled.")  # type: ignore[index]
    assert off.value.body["param"] == "response_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as chained:
        thinking_client.responses.create(model=SERVED, input="x", previous_response_id=r.id)
    assert chained.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_reasoning_items(thinking_client: openai.OpenAI) -> None:
    r = thinking_client.responses.create(model=SERVED, input="Think about this")
    assert [item.type for item in r.output] == ["reasoning", "message"]
    reasoning = r.output[0]
    assert reasoning.id.startswith("rs_")
    assert reasoning.content is not None  # type: ignore[union-attr]
    assert "The user wrote 3 words" in reasoning.content[0].text  # type: ignore[union-attr]
    assert reasoning.summary == []  # type: ignore[union-attr]
    assert r.text is None  # not a text-only output
    assert r.usage is not None
    assert r.usage.output_tokens_details.reasoning_tokens > 0
    summarized = thinking_client.responses.create(model=SERVED, input="Think", reasoning={"summary": "auto"})
    assert summarized.output[0].summary[0].text == summarized.output[0].content[0].text  # type: ignore[union-attr]
    assert summarized.reasoning is not None
    assert summarized.reasoning.effort == "medium"
    off = thinking_client.responses.create(model=SERVED, input="Think", reasoning={"effort": "none"})
    assert [item.type for item in off.output] == ["message"]
    assert off.reasoning is not None
    assert off.reasoning.effort is None  # "none" is not echoed


def test_stream_reasoning_then_text(thinking_client: openai.OpenAI) -> None:
    with thinking_client.responses.create(model=SERVED, input="Think and stream", stream=True) as events:
        seen = list(events)
    kinds = [e.type for e in seen]
    first_text = kinds.index("response.output_text.delta")
    assert "response.reasoning_text.delta" in kinds[:first_text]
    assert kinds.index("response.reasoning_text.done") < first_text
    reasoning = "".join(e.delta for e in seen if e.type == "response.reasoning_text.delta")
    final = seen[-1].response  # type: ignore[union-attr]
    assert final.output[0].content[0].text == reasoning
    assert [i.output_index for i in seen if i.type == "response.output_item.added"] == [0, 1]


def test_background_and_cancel(standins: StandinFactory) -> None:
    slow = standins.launch("--enable-response-store", "--served-model-name", SERVED,
                           "--standin-token-delay", "0.05")  # fmt: skip
    with client_for(slow) as sdk:
        queued = sdk.responses.create(model=SERVED, input="Hello in the background", background=True)
        assert queued.status == "queued"
        assert queued.output == []
        deadline = time.monotonic() + 30
        while (done := sdk.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert done.status == "completed"
        assert done.output_text.startswith("You said: Hello in the background.")
        running = sdk.responses.create(model=SERVED, input="A long one " * 20, background=True)
        time.sleep(0.2)
        cancelled = sdk.responses.cancel(running.id)
        assert cancelled.status == "cancelled"
        time.sleep(0.3)
        assert sdk.responses.retrieve(running.id).status == "cancelled"
    aborts = [e for e in slow.events() if e["event"] == "abort"]
    assert [e["rid"] for e in aborts] == [running.id]
    with pytest.raises(openai.BadRequestError):
        client_for(slow).responses.create(model=SERVED, input="x", background=True, store=False)


def test_stream_aborted_ends_failed(standins: StandinFactory) -> None:
    slow = standins.launch("--served-model-name", SERVED, "--standin-token-delay", "0.05")
    rid = "resp_" + "a" * 32
    with client_for(slow) as sdk:
        stream = sdk.responses.create(model=SERVED, input="Abort me " * 10, stream=True,
                                      extra_body={"request_id": rid})  # fmt: skip
        with stream as events:
            seen = []
            for event in events:
                seen.append(event)
                if event.type == "response.output_text.delta":
                    reply = httpx.post(
                        f"{slow.base_url}/abort_request", json={"rid": rid}, headers=slow.headers
                    )
                    assert reply.status_code == 200
                    break
            seen += list(events)
    final = seen[-1]
    assert final.type == "response.failed"
    assert final.response.error is not None  # type: ignore[union-attr]
    assert final.response.error.code == "server_error"  # type: ignore[union-attr]
