"""CAMEL ChatAgent on a server sglang_backend launches: chat, a tool, structured output.

Run: ``pip install 'sglang-backend[camel]'`` then ``python examples/integrations/camel_agent.py``.
"""

from __future__ import annotations

import asyncio

from _server import MODEL, model_options
from camel.agents import ChatAgent
from camel.toolkits import FunctionTool
from pydantic import BaseModel

from sglang_backend.integrations.camel import SGLangModel


class CityWeather(BaseModel):
    city: str
    temperature_c: float
    sunny: bool


def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city (str): the city name.
    """
    return f"Sunny and 21 C in {city}"


def main() -> None:
    with SGLangModel(MODEL, {"temperature": 0}, **model_options()) as model:  # stopped on exit
        agent = ChatAgent("You are a helpful assistant.", model=model,
                          tools=[FunctionTool(get_weather)])
        print(agent.step("Hello, my name is Ada").msgs[0].content)
        reply = agent.step("Please call get_weather for Paris")
        print("tools:", [(r.tool_name, r.result) for r in reply.info["tool_calls"]])
        print(reply.msgs[0].content)
        report = ChatAgent("Report the weather.", model=model)
        print(report.step("Weather in Oslo", response_format=CityWeather).msgs[0].parsed)


async def amain() -> None:
    async with SGLangModel(MODEL, **model_options()) as model:  # never blocks the event loop
        agent = ChatAgent("Be brief.", model=model)
        print((await agent.astep("Hello from asyncio")).msgs[0].content)


if __name__ == "__main__":
    main()
    asyncio.run(amain())
