"""A Pydantic AI agent on a server sglang_backend launches: chat, a tool, typed output, streaming.

Run: ``pip install 'sglang-backend[pydantic-ai]'`` then
``python examples/integrations/pydantic_ai_agent.py``.
"""

from __future__ import annotations

import asyncio

from _server import MODEL, model_options
from pydantic import BaseModel
from pydantic_ai import Agent

from sglang_backend import AsyncSGLangModel
from sglang_backend.integrations.pydantic_ai import sglang_chat_model


class CityWeather(BaseModel):
    city: str
    temperature_c: float
    sunny: bool


async def main() -> None:
    model = sglang_chat_model(AsyncSGLangModel(MODEL, **model_options()))  # no I/O yet
    agent = Agent(model, instructions="Be brief.")

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"Sunny and 21 C in {city}"

    async with agent:  # starts the server; stops it when the block ends
        first = await agent.run("Hello, my name is Ada")
        print(first.output)
        print((await agent.run("Please call get_weather for Paris")).output)
        reporter = Agent(model, output_type=CityWeather)  # typed output, no other tools
        print((await reporter.run("Weather in Oslo")).output)
        async with agent.run_stream("Stream a short reply") as run:
            async for delta in run.stream_text(delta=True):
                print(delta, end="", flush=True)
        print()


if __name__ == "__main__":
    asyncio.run(main())
