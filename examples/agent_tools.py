"""An async agent loop with tools: the model asks for a tool, we run it locally, send the
result back, and loop until the model gives a final answer.

Run it anywhere: ``python examples/agent_tools.py``. Without a GPU it launches the CPU
stand-in server; set ``SGLANG_URL`` (and ``SGLANG_API_KEY``) to use a running server, or run
it on a GPU machine with SGLang installed to launch the real thing (``SGLANG_MODEL`` picks
the model; ``SGLANG_BACKEND_STANDIN=1`` forces the stand-in).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from _where import MODEL, model_options

from sglang_backend import AsyncSGLangModel


def get_weather(city: str, unit: str = "celsius") -> str:
    """The local tool: a real agent would call an API here."""
    return json.dumps({"city": city, "temperature": 21 if unit == "celsius" else 70,
                       "unit": unit, "sky": "sunny"})


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]
LOCAL_TOOLS = {"get_weather": get_weather}


async def agent(model: AsyncSGLangModel, question: str, max_turns: int = 5) -> str:
    """Ask, execute every requested tool call locally, send results back, repeat."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for _ in range(max_turns):
        reply = await model.run(messages, tools=TOOLS, stream=False)
        message = reply.choices[0].message
        if not message.tool_calls:
            return message.content or ""
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            arguments = json.loads(call.function.arguments or "{}")
            result = LOCAL_TOOLS[call.function.name](**arguments)
            print(f"tool call: {call.function.name}({arguments}) -> {result}")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    raise RuntimeError(f"no final answer after {max_turns} turns")


async def main() -> None:
    options = model_options(tool_call_parser="qwen")  # tool calls need the family's parser
    async with AsyncSGLangModel(MODEL, {"temperature": 0.0}, **options) as model:
        answer = await agent(model, "What is the weather in Paris? Use get_weather.")
        print(f"final answer: {answer}")


if __name__ == "__main__":
    asyncio.run(main())
