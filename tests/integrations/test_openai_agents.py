"""The OpenAI Agents SDK on a stand-in server launched by the library."""

from __future__ import annotations

import pytest

agents = pytest.importorskip("agents")

from agents import Agent, Runner, function_tool  # noqa: E402
from openai.types.responses import ResponseTextDeltaEvent  # noqa: E402

from sglang_backend import AsyncSGLangModel, ServerState  # noqa: E402
from sglang_backend.integrations.openai_agents import sglang_agents_model  # noqa: E402

from .conftest import CityWeather, run_example  # noqa: E402

CALLS: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    CALLS.append(city)
    return f"Sunny and 21 C in {city}"


async def test_two_turn_conversation(sglang_model: AsyncSGLangModel) -> None:
    async with sglang_agents_model(sglang_model) as model:
        agent = Agent(name="assistant", instructions="Be brief.", model=model)
        first = await Runner.run(agent, "My name is Ada")
        assert "My name is Ada" in first.final_output
        follow_up = {"role": "user", "content": "What is my name?"}
        second = await Runner.run(agent, [*first.to_input_list(), follow_up])
        assert "What is my name?" in second.final_output
        assert sglang_model.state is ServerState.READY
    assert sglang_model.state is ServerState.CLOSED


async def test_tool_round_trip(sglang_model: AsyncSGLangModel) -> None:
    CALLS.clear()
    async with sglang_agents_model(sglang_model) as model:
        agent = Agent(name="assistant", model=model, tools=[get_weather])
        result = await Runner.run(agent, "Use get_weather for Paris please")
    assert len(CALLS) == 1
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"]
    assert kinds[-1] == "message_output_item"
    assert isinstance(result.final_output, str)
    assert result.final_output
    assert CALLS[0] in str(result.new_items[1].output)


async def test_structured_output(sglang_model: AsyncSGLangModel) -> None:
    async with sglang_agents_model(sglang_model) as model:
        agent = Agent(name="reporter", model=model, output_type=CityWeather)
        result = await Runner.run(agent, "Weather report for Oslo")
    assert isinstance(result.final_output, CityWeather)


async def test_streaming(sglang_model: AsyncSGLangModel) -> None:
    async with sglang_agents_model(sglang_model) as model:
        agent = Agent(name="assistant", model=model)
        run = Runner.run_streamed(agent, "Stream this back")
        deltas = [
            event.data.delta
            async for event in run.stream_events()
            if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent)
        ]
    assert len(deltas) > 1
    assert "".join(deltas) == run.final_output
    assert "Stream this back" in run.final_output


async def test_tool_round_trip_streamed(sglang_model: AsyncSGLangModel) -> None:
    CALLS.clear()
    async with sglang_agents_model(sglang_model) as model:
        agent = Agent(name="assistant", model=model, tools=[get_weather])
        run = Runner.run_streamed(agent, "get_weather for Rome")
        names = [event.name async for event in run.stream_events() if event.type == "run_item_stream_event"]
    assert len(CALLS) == 1
    assert "tool_called" in names
    assert "tool_output" in names
    assert run.final_output


async def test_agent_fails_after_the_context_exits(sglang_model: AsyncSGLangModel) -> None:
    async with sglang_agents_model(sglang_model) as model:
        agent = Agent(name="assistant", model=model)
        await Runner.run(agent, "hi")
    with pytest.raises(RuntimeError, match="client has been closed"):
        await Runner.run(agent, "hi again")


def test_example_runs() -> None:
    out = run_example("openai_agents_run.py")
    assert "You said: Hello, my name is Ada" in out
