"""Pydantic AI agents on a stand-in server launched by the library."""

from __future__ import annotations

import pytest

pydantic_ai = pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent, NativeOutput, RunContext, ToolOutput  # noqa: E402
from pydantic_ai.messages import ToolCallPart, ToolReturnPart  # noqa: E402

from sglang_backend import AsyncSGLangModel, ServerState  # noqa: E402
from sglang_backend.integrations.pydantic_ai import (  # noqa: E402
    SGLangProvider,
    sglang_chat_model,
    sglang_model,
)

from .conftest import CityWeather, run_example  # noqa: E402


async def test_two_turn_conversation(sglang_model: AsyncSGLangModel) -> None:
    model = sglang_chat_model(sglang_model)
    assert sglang_model.state is ServerState.CREATED  # no I/O until used
    agent = Agent(model, instructions="Be brief.")
    async with agent:
        assert sglang_model.state is ServerState.READY
        provider = model._provider
        assert isinstance(provider, SGLangProvider)
        assert await provider.endpoint.ready()
        assert provider.endpoint.openai_base_url == f"{sglang_model.base_url}/v1"
        first = await agent.run("My name is Ada")
        assert "My name is Ada" in first.output
        second = await agent.run("What is my name?", message_history=first.all_messages())
        assert "What is my name?" in second.output
        assert len(second.all_messages()) == 4
    assert sglang_model.state is ServerState.CLOSED


async def test_first_request_starts_the_server(sglang_model: AsyncSGLangModel) -> None:
    agent = Agent(sglang_chat_model(sglang_model))
    result = await agent.run("Hello lazily")  # no `async with`: the request starts it
    assert "Hello lazily" in result.output
    assert sglang_model.state is ServerState.READY
    await sglang_model.aclose()


async def test_tool_round_trip(sglang_model: AsyncSGLangModel) -> None:
    calls: list[str] = []
    agent = Agent(sglang_chat_model(sglang_model), instructions="Use tools when asked.")

    @agent.tool
    def get_weather(ctx: RunContext[None], city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"Sunny and 21 C in {city}"

    async with agent:
        result = await agent.run("Please call get_weather for Paris")
    assert len(calls) == 1
    parts = [p for m in result.all_messages() for p in m.parts]
    assert any(isinstance(p, ToolCallPart) and p.tool_name == "get_weather" for p in parts)
    returns = [p for p in parts if isinstance(p, ToolReturnPart)]
    assert returns
    assert returns[0].content == f"Sunny and 21 C in {calls[0]}"
    assert isinstance(result.output, str)
    assert result.output


@pytest.mark.parametrize("mode", ["tool", "native"])
async def test_structured_output(sglang_model: AsyncSGLangModel, mode: str) -> None:
    output = ToolOutput(CityWeather) if mode == "tool" else NativeOutput(CityWeather)
    async with sglang_model_cm(sglang_model) as model:
        agent = Agent(model, output_type=output)
        result = await agent.run("Weather report for Oslo")
    assert isinstance(result.output, CityWeather)


async def test_streaming(sglang_model: AsyncSGLangModel) -> None:
    async with sglang_model_cm(sglang_model) as model:
        agent = Agent(model)
        async with agent.run_stream("Stream this back") as run:
            deltas = [delta async for delta in run.stream_text(delta=True, debounce_by=None)]
        assert len(deltas) > 1
        assert "Stream this back" in "".join(deltas)
        assert sglang_model.server is not None
        assert sglang_model.server.inflight == 0


async def test_structured_output_streamed(sglang_model: AsyncSGLangModel) -> None:
    async with sglang_model_cm(sglang_model) as model:
        agent = Agent(model, output_type=CityWeather)
        async with agent.run_stream("Weather report for Oslo") as run:
            partials = [p async for p in run.stream_output(debounce_by=None)]
        assert isinstance(partials[-1], CityWeather)


sglang_model_cm = sglang_model


def test_example_runs() -> None:
    out = run_example("pydantic_ai_agent.py")
    assert "You said: Hello, my name is Ada" in out
