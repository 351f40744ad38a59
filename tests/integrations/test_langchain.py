"""LangChain's ChatOpenAI on a stand-in server launched by the library."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("langchain_openai")

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool

from sglang_backend import AsyncSGLangModel, ServerState
from sglang_backend.integrations.langchain import sglang_chat_openai

from .conftest import CityWeather, run_example

CALLS: list[str] = []


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    CALLS.append(city)
    return f"Sunny and 21 C in {city}"


async def test_two_turn_conversation(sglang_model: AsyncSGLangModel) -> None:
    async with sglang_chat_openai(sglang_model, temperature=0) as llm:
        history: list = [HumanMessage("My name is Ada")]
        first = await llm.ainvoke(history)
        assert isinstance(first, AIMessage)
        assert "My name is Ada" in first.content
        history += [first, HumanMessage("What is my name?")]
        second = await llm.ainvoke(history)
        assert "What is my name?" in second.content
        assert second.usage_metadata["input_tokens"] > first.usage_metadata["input_tokens"]
        assert sglang_model.state is ServerState.READY
    assert sglang_model.state is ServerState.CLOSED


async def test_tool_round_trip(sglang_model: AsyncSGLangModel) -> None:
    CALLS.clear()
    async with sglang_chat_openai(sglang_model) as llm:
        with_tools = llm.bind_tools([get_weather])
        history: list = [HumanMessage("Please call get_weather for Paris")]
        call = await with_tools.ainvoke(history)
        assert [c["name"] for c in call.tool_calls] == ["get_weather"]
        history.append(call)
        for tool_call in call.tool_calls:
            result = await get_weather.ainvoke(tool_call)
            assert isinstance(result, ToolMessage)
            history.append(result)
        final = await with_tools.ainvoke(history)
    assert len(CALLS) == 1
    assert not final.tool_calls
    assert final.content


async def test_forced_tool_choice(sglang_model: AsyncSGLangModel) -> None:
    async with sglang_chat_openai(sglang_model) as llm:
        forced = llm.bind_tools([get_weather], tool_choice="get_weather")
        call = await forced.ainvoke("Anything at all")
        assert call.tool_calls[0]["name"] == "get_weather"
        required = llm.bind_tools([get_weather], tool_choice="any")
        call = await required.ainvoke("Anything at all")
        assert call.tool_calls[0]["name"] == "get_weather"


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
async def test_structured_output(sglang_model: AsyncSGLangModel, method: str) -> None:
    async with sglang_chat_openai(sglang_model) as llm:
        structured = llm.with_structured_output(CityWeather, method=method)
        result = await structured.ainvoke("Weather report for Oslo as JSON")
    assert isinstance(result, CityWeather)


async def test_json_mode_sends_json_object(sglang_model: AsyncSGLangModel) -> None:
    # json_mode asks for any JSON object (no schema is sent): the stand-in's object is valid
    # JSON that does not fit CityWeather, so the parsing error comes back with the raw reply.
    async with sglang_chat_openai(sglang_model) as llm:
        structured = llm.with_structured_output(CityWeather, method="json_mode", include_raw=True)
        result = await structured.ainvoke("Weather report for Oslo as JSON")
    assert json.loads(result["raw"].content)
    assert result["parsed"] is None
    assert result["parsing_error"] is not None


async def test_streaming(sglang_model: AsyncSGLangModel) -> None:
    async with sglang_chat_openai(sglang_model) as llm:
        chunks = [chunk async for chunk in llm.astream("Stream this back")]
        assert len(chunks) > 2
        assert all(isinstance(c, AIMessageChunk) for c in chunks)
        merged = chunks[0]
        for chunk in chunks[1:]:
            merged += chunk
        assert "Stream this back" in merged.content
        assert merged.usage_metadata
        assert merged.usage_metadata["output_tokens"] > 0
        assert sglang_model.server is not None
        assert sglang_model.server.inflight == 0


async def test_streaming_tool_call(sglang_model: AsyncSGLangModel) -> None:
    async with sglang_chat_openai(sglang_model) as llm:
        merged = None
        async for chunk in llm.bind_tools([get_weather]).astream("get_weather for Rome"):
            merged = chunk if merged is None else merged + chunk
    assert merged is not None
    assert merged.tool_calls[0]["name"] == "get_weather"


def test_example_runs() -> None:
    out = run_example("langchain_chat.py")
    assert "You said: Hello, my name is Ada" in out
