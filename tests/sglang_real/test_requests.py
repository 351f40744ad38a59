"""The request bodies the library sends, judged by SGLang's ``ChatCompletionRequest``.

The library runs its real code path in connect mode against a capture server that records
each JSON body. Every body must validate with SGLang 0.5.23's request model, carry no key
SGLang does not declare (SGLang would silently ignore it), and the fields SGLang reads —
including what ``ChatCompletionRequest.to_sampling_params`` hands to the scheduler — must
hold the values meant.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from sglang.srt.entrypoints.openai import protocol

from sglang_backend import AsyncSGLangModel, InvalidRequestError
from sglang_backend._requests import check_messages

from .._shapes import HELLO, WEATHER_TOOL, Address, Person
from .conftest import CaptureServer, judge

pytestmark = pytest.mark.filterwarnings("ignore:max_tokens is deprecated:DeprecationWarning")

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
KEY = "capture-key"



class LookUpOrder(BaseModel):
    """Find an order by id."""

    order_id: str
    include_items: bool = False


PERSON = Person(name="Ada", age=36, role="admin", addresses=[Address(street="1 Main", city="X",
                zip_code="1")], scores={"math": 1.0}, active=True)  # fmt: skip


def sglang_request(body: Mapping[str, Any]) -> protocol.ChatCompletionRequest:
    """Validate *body* as SGLang does (body → ChatCompletionRequest), declared keys only."""
    request: protocol.ChatCompletionRequest = judge(protocol.ChatCompletionRequest, dict(body))
    return request


def sampling(request: protocol.ChatCompletionRequest) -> dict[str, Any]:
    """What SGLang hands to the scheduler for this request (no model generation config)."""
    stop = request.stop or []
    params: dict[str, Any] = request.to_sampling_params(
        stop=[stop] if isinstance(stop, str) else list(stop), model_generation_config={}
    )
    return params


def model_for(capture: CaptureServer, config: dict[str, Any] | None = None) -> AsyncSGLangModel:
    return AsyncSGLangModel(MODEL, config, api_key=KEY, url=capture.url, timeout=30)


async def test_plain_request(capture: CaptureServer) -> None:
    config = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 20, "stop": ["END", "STOP"], "seed": 7,
              "presence_penalty": 0.5, "frequency_penalty": -0.5, "n": 1, "user": "u1",
              "logit_bias": {"42": -100.0}, "logprobs": True, "top_logprobs": 2}  # fmt: skip
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "No emojis."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "Thanks"},
    ]  # fmt: skip
    async with model_for(capture, config) as model:
        reply = await model.run(messages)
    assert reply.choices[0].message.content == "Hello!"
    assert capture.headers[0]["authorization"] == f"Bearer {KEY}"
    body = capture.body
    request = sglang_request(body)
    assert request.model == MODEL
    assert request.stream is False
    assert [m.role for m in request.messages] == [m["role"] for m in messages]
    assert request.messages[3].tool_calls[0].function.name == "get_weather"
    assert request.messages[4].tool_call_id == "call_1"
    assert request.tool_choice == "none"  # SGLang's default without tools
    assert request.max_tokens == 20
    params = sampling(request)
    assert params["temperature"] == 0.3
    assert params["top_p"] == 0.9
    assert params["max_new_tokens"] == 20
    assert params["stop"] == ["END", "STOP"]
    assert params["sampling_seed"] == 7
    assert params["presence_penalty"] == 0.5
    assert params["frequency_penalty"] == -0.5
    assert params["logit_bias"] == {"42": -100.0}
    assert request.logprobs is True
    assert request.top_logprobs == 2
    assert request.user == "u1"


async def test_defaults_leave_sglang_defaults(capture: CaptureServer) -> None:
    async with model_for(capture) as model:
        await model.run(HELLO)
    body = capture.body
    # The rid is not a sampling setting: it names the request so a cancel can abort it.
    assert set(body) == {"model", "messages", "rid"}, "the library must not invent sampling defaults"
    request = sglang_request(body)
    assert isinstance(request.rid, str)
    assert request.rid == body["rid"]
    params = sampling(request)
    assert params["temperature"] == 1.0
    assert params["max_new_tokens"] is None  # SGLang then allows the rest of the context


async def test_streaming_request_asks_for_usage(capture: CaptureServer) -> None:
    async with model_for(capture, {"stream": True, "max_completion_tokens": 9}) as model:
        stream = await model.run(HELLO)
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 5
    request = sglang_request(capture.body)
    assert request.stream is True
    assert request.stream_options is not None
    assert request.stream_options.include_usage is True
    assert sampling(request)["max_new_tokens"] == 9


async def test_pydantic_structured_output_nested(capture: CaptureServer) -> None:
    capture.reply = PERSON.model_dump_json()
    async with model_for(capture) as model:
        reply = await model.run([{"role": "user", "content": "Describe Ada"}], response_format=Person)
    assert reply.choices[0].message.parsed == PERSON
    request = sglang_request(capture.body)
    assert request.response_format is not None
    assert request.response_format.type == "json_schema"
    spec = request.response_format.json_schema
    assert spec is not None
    assert spec.name == "Person"
    assert spec.strict is True
    schema = spec.schema_
    assert schema is not None
    assert schema == openai.pydantic_function_tool(Person)["function"]["parameters"]
    assert set(schema["required"]) == set(Person.model_fields)  # type: ignore[arg-type]
    nested = schema["$defs"]["Address"]  # type: ignore[index]
    assert set(nested["properties"]) == {"street", "city", "zip_code"}
    # What the grammar backend compiles: the schema, as a JSON string.
    assert json.loads(sampling(request)["json_schema"]) == schema


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {"type": "text"},
        {"type": "json_schema", "json_schema": {"name": "city", "schema": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    ],
    ids=["json_object", "text", "json_schema-dict"],
)  # fmt: skip
async def test_dict_response_formats(capture: CaptureServer, response_format: dict[str, Any]) -> None:
    async with model_for(capture) as model:
        await model.run(HELLO, response_format=response_format)
    request = sglang_request(capture.body)
    assert request.response_format is not None
    assert request.response_format.type == response_format["type"]
    params = sampling(request)
    if response_format["type"] == "json_object":
        assert params["json_schema"] == '{"type": "object"}'
    elif response_format["type"] == "json_schema":
        assert json.loads(params["json_schema"]) == response_format["json_schema"]["schema"]
    else:
        assert "json_schema" not in params


@pytest.mark.parametrize(
    "tool_choice",
    ["auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["auto", "none", "required", "named"],
)
async def test_tools_with_each_tool_choice(capture: CaptureServer, tool_choice: Any) -> None:
    capture.tool_call = {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}
    async with model_for(capture, {"tool_choice": tool_choice, "parallel_tool_calls": False}) as model:
        reply = await model.run([{"role": "user", "content": "Weather in Paris?"}],
                                tools=[WEATHER_TOOL, LookUpOrder])  # fmt: skip
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[index,union-attr]
    request = sglang_request(capture.body)
    assert request.tools is not None
    names = [tool.function.name for tool in request.tools]
    assert names == ["get_weather", "LookUpOrder"]
    assert all(tool.type == "function" for tool in request.tools)
    assert request.tools[0].function.parameters == WEATHER_TOOL["function"]["parameters"]  # type: ignore[index]
    order = request.tools[1].function
    assert order.description == "Find an order by id."
    assert set(order.parameters["properties"]) == {"order_id", "include_items"}  # type: ignore[index]
    assert request.parallel_tool_calls is False
    if isinstance(tool_choice, str):
        assert request.tool_choice == tool_choice
    else:
        assert isinstance(request.tool_choice, protocol.ToolChoice)
        assert request.tool_choice.function.name == "get_weather"
        # serving_chat._validate_request: the named tool must be among the tools.
        assert request.tool_choice.function.name in names


async def test_tools_given_in_the_config(capture: CaptureServer) -> None:
    async with model_for(capture, {"tools": [WEATHER_TOOL]}) as model:
        await model.run(HELLO)
    request = sglang_request(capture.body)
    assert request.tools is not None
    assert [t.function.name for t in request.tools] == ["get_weather"]
    assert request.tool_choice == "auto"  # SGLang's default with tools


EXTRAS: list[tuple[str, dict[str, Any]]] = [
    ("sampling-extras", {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2,
                         "stop_token_ids": [151645, 7], "no_stop_trim": True, "ignore_eos": True,
                         "skip_special_tokens": False, "stop_regex": "\\d+$"}),
    ("regex", {"regex": "(yes|no)"}),
    ("ebnf", {"ebnf": 'root ::= "yes" | "no"'}),
    ("reasoning", {"chat_template_kwargs": {"enable_thinking": False}, "separate_reasoning": False,
                   "stream_reasoning": False}),
    ("reasoning-effort", {"reasoning_effort": "low"}),
    ("misc", {"continue_final_message": True, "lora_path": "adapter-a", "rid": "req-1",
              "priority": 3, "custom_params": {"k": 1}, "return_hidden_states": True}),
]  # fmt: skip


@pytest.mark.parametrize("config", [e[1] for e in EXTRAS], ids=[e[0] for e in EXTRAS])
async def test_sglang_extras(capture: CaptureServer, config: dict[str, Any]) -> None:
    async with model_for(capture, config) as model:
        await model.run(HELLO)
    body = capture.body
    request = sglang_request(body)
    for key, value in config.items():
        assert body[key] == value, key
        if key == "reasoning_effort":
            assert request.reasoning_effort == value
            # SGLang derives the template switches from the effort.
            assert request.chat_template_kwargs == {"thinking": True, "enable_thinking": True}
        else:
            assert getattr(request, key) == value, key
    params = sampling(request)
    readers = {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty",
               "min_tokens": "min_new_tokens", "stop_token_ids": "stop_token_ids",
               "no_stop_trim": "no_stop_trim", "ignore_eos": "ignore_eos",
               "skip_special_tokens": "skip_special_tokens", "stop_regex": "stop_regex",
               "regex": "regex", "ebnf": "ebnf", "custom_params": "custom_params"}  # fmt: skip
    for key, param in readers.items():
        if key in config:
            assert params[param] == config[key], key


async def test_token_counting_requests(capture: CaptureServer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    async with model_for(capture) as model:
        assert await model.token_counter.count_tokens_from_messages(messages) == 2
        assert await model.token_counter.count_text("Hello world") == 2
    chat, text = capture.tokenize_bodies
    request = judge(protocol.TokenizeRequest, chat)
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.prompt is None
    plain = judge(protocol.TokenizeRequest, text)
    assert plain.prompt == "Hello world"
    assert plain.add_special_tokens is False


TEXT = {"type": "text", "text": "hi"}
MESSAGE_CASES: list[tuple[str, Any]] = [
    ("text", [{"role": "user", "content": "hi"}]),
    ("text-part", [{"role": "user", "content": [TEXT]}]),
    ("image-part", [{"role": "user", "content": [
        TEXT, {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]),
    ("audio-part", [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]),
    ("video-part", [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "http://x/v.mp4"}}]}]),
    ("file-part", [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]),
    ("refusal-part", [{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]),
    ("assistant-thinking-part", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm"}, TEXT]}, {"role": "user", "content": "go on"}]),
    ("user-thinking-part", [{"role": "user", "content": [{"type": "thinking", "thinking": "hmm"}]}]),
    ("unknown-role", [{"role": "wizard", "content": "hi"}]),
    ("no-role", [{"content": "hi"}]),
    ("user-without-content", [{"role": "user"}]),
    ("user-null-content", [{"role": "user", "content": None}]),
    ("content-number", [{"role": "user", "content": 3}]),
    ("text-part-without-text", [{"role": "user", "content": [{"type": "text"}]}]),
    ("part-not-a-dict", [{"role": "user", "content": ["hi"]}]),
    ("assistant-tool-calls", [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}]),
    ("function-role", [{"role": "function", "name": "f", "content": "ok"}]),
    ("developer-role", [{"role": "developer", "content": "hi"}]),
]  # fmt: skip

def _sglang_accepts(messages: Any) -> bool:
    try:
        protocol.ChatCompletionRequest.model_validate({"model": MODEL, "messages": messages})
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("messages", [c[1] for c in MESSAGE_CASES], ids=[c[0] for c in MESSAGE_CASES])
def test_message_precheck_agrees_with_sglang(messages: Any) -> None:
    """The library's pre-check (before any launch) rejects exactly what SGLang rejects."""
    try:
        check_messages(messages)
        library = True
    except InvalidRequestError:
        library = False
    assert library == _sglang_accepts(messages)


@pytest.mark.parametrize(
    ("case", "messages"),
    [
        ("system-without-content", [{"role": "system"}]),
        ("tool-without-id", [{"role": "tool", "content": "ok"}]),
        ("upper-case-role", [{"role": "SYSTEM", "content": "hi"}]),
    ],
)
def test_message_precheck_stricter_than_sglang(case: str, messages: Any) -> None:
    """Documented, deliberate differences: OpenAI's rules, which SGLang does not enforce."""
    assert _sglang_accepts(messages), case
    with pytest.raises(InvalidRequestError):
        check_messages(messages)
