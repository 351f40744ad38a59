"""The chat surface: run, streaming, structured output, tools, extras, token counting."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from sglang_backend import (
    AsyncSGLangModel,
    BadRequestError,
    ChatStream,
    ConfigError,
    InvalidRequestError,
    ServerConfig,
    ServerState,
    SGLangConfig,
    StructuredOutputError,
    ToolCallParserMissingError,
)

from ._shapes import HELLO, WEATHER_TOOL, Address, Person
from .conftest import MODEL

Standin = Callable[..., ServerConfig]



@pytest.fixture
async def model(standin: Standin) -> AsyncIterator[AsyncSGLangModel]:
    async with AsyncSGLangModel(MODEL, server=standin(tool_call_parser="qwen")) as m:
        yield m


async def test_plain_completion_is_typed(model: AsyncSGLangModel) -> None:
    reply = await model.run(HELLO)
    assert isinstance(reply, ChatCompletion)
    assert reply.choices[0].message.role == "assistant"
    assert "Hello there" in (reply.choices[0].message.content or "")
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_typed_message_params_are_accepted(model: AsyncSGLangModel) -> None:
    from openai.types.chat import ChatCompletionUserMessageParam

    message: ChatCompletionUserMessageParam = {"role": "user", "content": "typed hello"}
    reply = await model.run([{"role": "system", "content": "Be brief."}, message])
    assert "typed hello" in (reply.choices[0].message.content or "")


async def test_sampling_config_reaches_the_server(standin: Standin) -> None:
    config = {"max_tokens": 4, "temperature": 0.0, "top_k": 20, "min_p": 0.05,
              "repetition_penalty": 1.1, "chat_template_kwargs": {"enable_thinking": False}}
    async with AsyncSGLangModel(MODEL, config, server=standin()) as model:
        reply = await model.run([{"role": "user", "content": "one two three four five six"}])
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 4


async def test_stop_string_is_honoured(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, {"stop": ["banana"]}, server=standin()) as model:
        reply = await model.run([{"role": "user", "content": "apple banana cherry"}])
        text = reply.choices[0].message.content or ""
        assert "banana" not in text
        assert reply.choices[0].finish_reason == "stop"


def test_unknown_config_key_names_key_and_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        AsyncSGLangModel(MODEL, {"temprature": 0.5})
    assert "temprature" in str(info.value)
    assert "temperature" in str(info.value)  # the allowed keys are listed
    with pytest.raises(ConfigError, match="top_p"):
        SGLangConfig(top_p=3)
    with pytest.raises(ConfigError, match="only one of"):
        SGLangConfig(regex="a+", ebnf="root ::= 'a'")


def test_check_model_config_and_stream_property() -> None:
    model = AsyncSGLangModel(MODEL, {"stream": True, "top_k": 5})
    model.check_model_config()
    assert model.stream is True
    model.model_config_dict["top_k"] = "many"
    with pytest.raises(ConfigError, match="top_k"):
        model.check_model_config()


async def test_streaming_chunks_then_usage(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, {"stream": True}, server=standin()) as model:
        stream = await model.run(HELLO)
        assert isinstance(stream, ChatStream)
        chunks = [chunk async for chunk in stream]
        assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "Hello there" in text
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] == "stop"
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens > 0
        assert stream.closed
        assert model.server is not None
        assert model.server.inflight == 0


async def test_per_call_stream_override(model: AsyncSGLangModel) -> None:
    stream = await model.run(HELLO, stream=True)
    async with stream:
        first = await stream.__anext__()
        assert first.choices[0].delta.role == "assistant"
    assert stream.closed
    assert model.server is not None
    assert model.server.inflight == 0
    plain = await model.run(HELLO, stream=False)
    assert isinstance(plain, ChatCompletion)


async def test_stream_counts_as_in_flight_under_short_idle_timeout(standin: Standin) -> None:
    # 30 tokens x 0.1 s: a ~3 s stream under a 1 s inactivity timeout must complete in full.
    config = standin(token_delay=0.1, inactivity_timeout=1.0)
    async with AsyncSGLangModel(MODEL, {"stream": True, "max_tokens": 30}, server=config) as model:
        pid = model.pid
        started = time.monotonic()
        stream = await model.run([{"role": "user", "content": " ".join(["word"] * 60)}])
        chunks = [chunk async for chunk in stream]
        assert time.monotonic() - started > 2.0
        usage = chunks[-1].usage
        assert usage is not None
        assert usage.completion_tokens == 30
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert model.pid == pid
        assert model.server is not None
        assert model.server.launches == 1


async def test_cancelling_stream_consumer_closes_the_stream(standin: Standin) -> None:
    config = standin(token_delay=0.2)
    async with AsyncSGLangModel(MODEL, {"stream": True}, server=config) as model:
        stream = await model.run(HELLO)

        async def consume() -> None:
            async for _ in stream:
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stream.closed
        assert model.server is not None
        assert model.server.inflight == 0
        reply = await model.run(HELLO, stream=False)  # still usable
        assert reply.choices[0].message.content


async def test_structured_output_nested_round_trip(model: AsyncSGLangModel) -> None:
    reply = await model.run([{"role": "user", "content": "Make up a person."}],
                            response_format=Person)
    parsed = reply.choices[0].message.parsed  # type: ignore[attr-defined]
    assert isinstance(parsed, Person)
    assert isinstance(parsed.addresses, list)
    assert all(isinstance(a, Address) for a in parsed.addresses)
    assert parsed.role in ("admin", "user", "guest")
    assert Person.model_validate_json(reply.choices[0].message.content or "") == parsed


async def test_dict_response_formats_pass_through(model: AsyncSGLangModel) -> None:
    reply = await model.run(HELLO, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    reply = await model.run(
        HELLO, response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    )
    assert isinstance(json.loads(reply.choices[0].message.content or "")["n"], int)


async def test_structured_output_cut_by_max_tokens_is_typed(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, {"max_tokens": 3}, server=standin()) as model:
        with pytest.raises(StructuredOutputError) as info:
            await model.run(HELLO, response_format=Person)
        assert info.value.raw is not None


async def test_tool_call_round_trip(model: AsyncSGLangModel) -> None:
    messages: list[dict[str, object]] = [
        {"role": "user", "content": "Use get_weather for Paris please"}
    ]
    reply = await model.run(messages, tools=[WEATHER_TOOL])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls
    call = calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str)
    assert args["unit"] in ("celsius", "fahrenheit")
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    final = await model.run(messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content


async def test_required_tool_choice_and_pydantic_tool(standin: Standin) -> None:
    class lookup_order(BaseModel):
        """Look an order up by id."""

        order_id: int

    config = standin(tool_call_parser="qwen")
    async with AsyncSGLangModel(MODEL, {"tool_choice": "required"}, server=config) as model:
        reply = await model.run(HELLO, tools=[lookup_order])
        calls = reply.choices[0].message.tool_calls
        assert calls
        assert calls[0].function.name == "lookup_order"
        assert isinstance(json.loads(calls[0].function.arguments)["order_id"], int)


async def test_tools_without_parser_fail_fast(standin: Standin) -> None:
    model = AsyncSGLangModel(MODEL, server=standin())
    with pytest.raises(ToolCallParserMissingError, match="tool_call_parser"):
        await model.run(HELLO, tools=[WEATHER_TOOL])
    assert model.state is ServerState.CREATED  # nothing was launched
    await model.aclose()


async def test_streaming_tool_calls(model: AsyncSGLangModel) -> None:
    stream = await model.run([{"role": "user", "content": "call get_weather"}],
                             tools=[WEATHER_TOOL], stream=True)
    names, arguments = [], ""
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names.append(call.function.name)
                if call.function and call.function.arguments:
                    arguments += call.function.arguments
    assert names == ["get_weather"]
    assert "city" in json.loads(arguments)


async def test_reasoning_content_is_exposed(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, server=standin(reasoning_parser="qwen3")) as model:
        reply = await model.run(HELLO)
        message = reply.choices[0].message
        assert getattr(message, "reasoning_content", None)
        assert message.content


async def test_token_counter_matches_usage(model: AsyncSGLangModel) -> None:
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Count these tokens, please!"}]
    counted = await model.token_counter.count_tokens_from_messages(messages)
    reply = await model.run(messages)
    assert reply.usage is not None
    assert counted == reply.usage.prompt_tokens
    assert await model.token_counter.count_text("one two three") >= 3


async def test_user_token_counter_is_honoured() -> None:
    sentinel = object()
    model = AsyncSGLangModel(MODEL, token_counter=sentinel)
    assert model.token_counter is sentinel
    await model.aclose()


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([], "empty"),
        ("hello", "list"),
        ([{"content": "no role"}], "role"),
        ([{"role": "wizard", "content": "x"}], "wizard"),
        ([{"role": "user"}], "content"),
        ([{"role": "user", "content": 42}], "content"),
        ([{"role": "user", "content": [{"type": "bogus"}]}], "content[0]"),
        ([{"role": "tool", "content": "x"}], "tool_call_id"),
        ([42], "messages[0]"),
    ],
)
async def test_bad_messages_fail_before_io(messages: object, needle: str) -> None:
    model = AsyncSGLangModel(MODEL)
    with pytest.raises(InvalidRequestError, match=needle.replace("[", r"\[")):
        await model.run(messages)
    assert model.state is ServerState.CREATED
    await model.aclose()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"tools": "get_weather"}, "tools must be a list"),
        ({"tools": [{"type": "function"}]}, "function"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}, "parameters"),
        ({"response_format": dict}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "yaml"),
        ({"response_format": {"type": "json_schema"}}, "schema"),
    ],
)
async def test_bad_tools_and_formats_fail_before_io(kwargs: dict[str, object], needle: str) -> None:
    model = AsyncSGLangModel(MODEL, server=ServerConfig(tool_call_parser="qwen"))
    with pytest.raises(InvalidRequestError, match=needle):
        await model.run(HELLO, **kwargs)  # type: ignore[arg-type]
    assert model.state is ServerState.CREATED
    await model.aclose()


async def test_server_rejection_is_typed_and_model_stays_usable(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, {"max_tokens": 10**6}, server=standin()) as model:
        with pytest.raises(BadRequestError) as info:
            await model.run(HELLO)
        assert info.value.status_code == 400
        assert "max_completion_tokens is too large" in str(info.value)  # serving_chat wording
    async with AsyncSGLangModel(MODEL, server=standin()) as model:
        with pytest.raises(BadRequestError):
            await model.run([{"role": "assistant", "content": "x"}], tools=None,
                            response_format={"type": "json_schema",
                                             "json_schema": {"name": "x", "schema": {"type": "bogus"}}})
        reply = await model.run(HELLO)
        assert reply.choices[0].message.content


async def test_request_timeout_is_typed_and_not_retried(standin: Standin, events_file: object) -> None:
    from sglang_backend import RequestTimeoutError

    from .conftest import read_events

    config = standin(token_delay=0.5)
    async with AsyncSGLangModel(MODEL, {"max_tokens": 20}, timeout=1.0, server=config) as model:
        with pytest.raises(RequestTimeoutError) as info:
            await model.run([{"role": "user", "content": " ".join(["word"] * 40)}])
        assert isinstance(info.value, TimeoutError)
        requests = [e for e in read_events(events_file) if e["event"] == "request"]  # type: ignore[arg-type]
        assert len(requests) == 1  # sent once, not retried
        assert model.server is not None
        assert model.server.inflight == 0


async def test_connect_mode_waits_for_a_server_that_is_still_starting(standin: Standin) -> None:
    import socket

    from sglang_backend._process import ServerProcess
    from sglang_backend.testing import standin_command

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = AsyncSGLangModel(MODEL, api_key="k", url=f"http://127.0.0.1:{port}", timeout=30)
    request = asyncio.ensure_future(client.run(HELLO))
    await asyncio.sleep(0.5)
    assert not request.done()  # connection refused: waiting on readiness, not failing
    server = await ServerProcess.spawn(
        [*standin_command(), "--model-path", MODEL, "--port", str(port), "--api-key", "k"]
    )
    try:
        reply = await asyncio.wait_for(request, 30)
        assert "Hello there" in (reply.choices[0].message.content or "")
    finally:
        await server.terminate(5)
        await client.aclose()


async def test_abandoned_stream_gives_its_lease_back(standin: Standin) -> None:
    import gc

    async with AsyncSGLangModel(MODEL, {"stream": True}, server=standin(token_delay=0.05)) as model:
        server = model.server
        stream = await model.run(HELLO)
        async for _ in stream:
            break  # a common mistake: no aclose()
        assert server is not None
        assert server.inflight == 1
        with pytest.warns(ResourceWarning, match="not closed"):
            del stream  # the last reference: collected here (CPython refcounting)
        gc.collect()
        for _ in range(100):
            if server.inflight == 0:
                break
            await asyncio.sleep(0.01)
        assert server.inflight == 0  # the watchdog can stop the server again
        reply = await model.run(HELLO, stream=False)
        assert reply.choices[0].message.content
