"""The OpenAI Agents SDK on a server sglang_backend launches: chat, a tool, typed output,
streaming. Tracing export is off: nothing leaves the machine.

Run: ``pip install 'sglang-backend[openai-agents]'`` then
``python examples/integrations/openai_agents_run.py``.
"""

from __future__ import annotations

import asyncio

from _server import MODEL, model_options
from agents import Agent, Runner, function_tool
from openai.types.responses import ResponseTextDeltaEvent
from pydantic import BaseModel

from sglang_backend import AsyncSGLangModel
from sglang_backend.integrations.openai_agents import sglang_agents_model


class CityWeather(BaseModel):
    city: str
    temperature_c: float
    sunny: bool


@function_tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Sunny and 21 C in {city}"


async def main() -> None:
    async with sglang_agents_model(AsyncSGLangModel(MODEL, **model_options())) as model:
        agent = Agent(name="assistant", instructions="Be brief.", model=model, tools=[get_weather])
        print((await Runner.run(agent, "Hello, my name is Ada")).final_output)
        print((await Runner.run(agent, "Please call get_weather for Paris")).final_output)

        reporter = Agent(name="reporter", model=model, output_type=CityWeather)
        print((await Runner.run(reporter, "Weather in Oslo")).final_output)

        run = Runner.run_streamed(agent, "Stream a short reply")
        async for event in run.stream_events():
            if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent):
                print(event.data.delta, end="", flush=True)
        print()
    # the server is stopped here


if __name__ == "__main__":
    asyncio.run(main())
