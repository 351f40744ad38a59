"""Chat completions through the real OpenAI SDK and raw SSE."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import AsyncIterator
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from sglang_backend._http import httpx
from tests.standin.conftest import Standin, StandinFactory

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city"],
        },
    },
}


class Address(BaseModel):
    street: str
    zip_code: int = Field(ge=10000, le=99999)


class Person(BaseModel):
    name: str
    born: datetime.datetime
    kind: Literal["friend", "foe"]
    tags: list[str] = Field(min_length=2)
    home: Address
    previous: list[Address]
    score: float = Field(ge=0, le=1)
    nickname: str | None = None
    active: bool


@pytest.fixture
async def client(shared: Standin) -> AsyncIterator[openai.AsyncOpenAI]:
    """An OpenAI SDK client (no retries) for the shared stand-in."""
    async with openai.AsyncOpenAI(
        base_url=shared.base_url + "/v1", api_key=shared.api_key, max_retries=0
    ) as sdk:
        yield sdk


async def _raw_events(server: Standin, body: dict[str, Any]) -> list[str]:
    async with (
        httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=10) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as reply,
    ):
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = (await reply.aread()).decode()
    events = text.split("\n\n")
    assert events[-1] == ""
    return [event.removeprefix("data: ") for event in events[:-1]]


async def test_non_streaming_shape(shared: Standin) -> None:
    async with httpx.AsyncClient(base_url=shared.base_url, headers=shared.headers) as http:
        reply = await http.post(
            "/v1/chat/completions",
            json={"model": "my-model", "messages": [{"role": "user", "content": "Tell me a story"}]},
        )
    body = reply.json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["object"] == "chat.completion"
    assert body["model"] == "my-model"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].startswith("You said: Tell me a story.")
    assert choice["message"]["reasoning_content"] is None
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    assert choice["matched_stop"] == 151645
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["reasoning_tokens"] == 0
    assert body["metadata"] == {"weight_version": "default"}


async def test_stop_length_and_eos(client: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "alpha beta gamma"}]
    full = await client.chat.completions.create(model="m", messages=messages)
    assert full.choices[0].finish_reason == "stop"
    text = full.choices[0].message.content or ""
    assert "alpha beta gamma" in text
    assert full.choices[0].model_extra is not None
    assert full.choices[0].model_extra["matched_stop"] == 151645
    cut = await client.chat.completions.create(model="m", messages=messages, stop=["gamma"])
    assert cut.choices[0].message.content == text.split("gamma")[0]
    assert cut.choices[0].model_extra is not None
    assert cut.choices[0].model_extra["matched_stop"] == "gamma"
    short = await client.chat.completions.create(model="m", messages=messages, max_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None
    assert short.usage.completion_tokens == 3
    assert short.choices[0].model_extra is not None
    assert short.choices[0].model_extra["matched_stop"] is None
    again = await client.chat.completions.create(model="m", messages=messages)
    assert again.choices[0].message.content == text


async def test_sse_sequence(shared: Standin) -> None:
    body = {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "one two three"}],
    }
    events = await _raw_events(shared, body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len({chunk["id"] for chunk in chunks}) == 1
    role, *deltas, finish, usage = chunks
    assert role["choices"][0]["delta"] == {"reasoning_content": None, "role": "assistant", "content": ""}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(d["choices"][0]["finish_reason"] is None for d in deltas)
    assert all("usage" not in d for d in deltas)
    assert finish["choices"][0]["delta"] == {"reasoning_content": None}
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["choices"][0]["matched_stop"] == 151645
    assert usage["choices"] == []
    text = "".join(d["choices"][0]["delta"]["content"] for d in deltas)
    assert text.startswith("You said: one two three.")
    assert usage["usage"]["completion_tokens"] == len(deltas) + 1  # + EOS
    no_usage = await _raw_events(shared, {**body, "stream_options": None})
    assert json.loads(no_usage[-2])["choices"][0]["finish_reason"] == "stop"


async def test_json_schema_output(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.parse(
        model="m",
        messages=[{"role": "user", "content": "Describe a person"}],
        response_format=Person,
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person)
    assert len(person.tags) >= 2
    json_object = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "json"}], response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(json_object.choices[0].message.content or ""), dict)


async def test_tool_calls_with_parser(client: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Please call get_weather for Paris"}]
    called = await client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == ""
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str)
    assert args["unit"] in {"celsius", "fahrenheit"}
    assert 1 <= args["days"] <= 7

    chatty = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "just talk"}], tools=[WEATHER_TOOL]
    )
    assert chatty.choices[0].finish_reason == "stop"
    assert chatty.choices[0].message.tool_calls is None
    forced = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "just talk"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    assert forced.choices[0].finish_reason == "tool_calls"
    answered = await client.chat.completions.create(
        model="m",
        tools=[WEATHER_TOOL],
        messages=[
            *messages,
            {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
    )
    assert answered.choices[0].finish_reason == "stop"
    assert "sunny, 21 C" in (answered.choices[0].message.content or "")


async def test_streamed_tool_call(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "x"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    fragments: list[Any] = []
    finishes = []
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.tool_calls:
                fragments.extend(choice.delta.tool_calls)
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert finishes == ["tool_calls"]
    first, *rest = fragments
    assert first.id.startswith("call_")
    assert first.function.name == "get_weather"
    assert first.function.arguments == ""
    assert rest
    assert all(f.id is None and f.function.name is None for f in rest)
    arguments = "".join(f.function.arguments for f in rest)
    assert "city" in json.loads(arguments)


async def test_tools_without_parser_and_reasoning(standins: StandinFactory) -> None:
    server = standins.launch("--reasoning-parser", "qwen3")
    async with openai.AsyncOpenAI(
        base_url=server.base_url + "/v1", api_key=server.api_key, max_retries=0
    ) as client:
        raw = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "use get_weather"}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
        )
        message = raw.choices[0].message
        assert message.tool_calls is None
        assert raw.choices[0].finish_reason == "stop"
        assert "<tool_call>" in (message.content or "")
        assert message.model_extra is not None
        assert message.model_extra["reasoning_content"].startswith("The user wrote")
        assert raw.usage is not None
        assert raw.usage.model_extra is not None
        assert raw.usage.model_extra["reasoning_tokens"] > 0
        kept = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"separate_reasoning": False},
        )
        assert (kept.choices[0].message.content or "").startswith("<think>")
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        kinds = []
        async for chunk in stream:
            extra = chunk.choices[0].delta.model_extra if chunk.choices else None
            if extra and extra.get("reasoning_content"):
                kinds.append("r")
            if chunk.choices and chunk.choices[0].delta.content:
                kinds.append("c")
        assert kinds[0] == "r"
        assert kinds[-1] == "c"
        assert "".join(kinds).count("rc") == 1
