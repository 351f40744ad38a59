"""LangChain's ChatOpenAI on a server sglang_backend launches: chat, tools, structured output,
streaming.

Run: ``pip install 'sglang-backend[langchain]'`` then ``python examples/integrations/langchain_chat.py``.
"""

from __future__ import annotations

import asyncio

from _server import MODEL, model_options
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from sglang_backend import AsyncSGLangModel
from sglang_backend.integrations.langchain import sglang_chat_openai


class CityWeather(BaseModel):
    city: str
    temperature_c: float
    sunny: bool


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Sunny and 21 C in {city}"


async def main() -> None:
    async with sglang_chat_openai(AsyncSGLangModel(MODEL, **model_options())) as llm:
        print((await llm.ainvoke("Hello, my name is Ada")).content)

        history: list = [HumanMessage("Please call get_weather for Paris")]
        with_tools = llm.bind_tools([get_weather])
        call = await with_tools.ainvoke(history)
        history.append(call)
        history += [await get_weather.ainvoke(tool_call) for tool_call in call.tool_calls]
        print((await with_tools.ainvoke(history)).content)

        print(await llm.with_structured_output(CityWeather).ainvoke("Weather in Oslo"))

        async for chunk in llm.astream("Stream a short reply"):
            print(chunk.content, end="", flush=True)
        print()
    # the server is stopped here


if __name__ == "__main__":
    asyncio.run(main())
