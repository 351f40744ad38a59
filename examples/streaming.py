"""Streaming a reply to the terminal as it is generated, then its token usage.

Run it anywhere: ``python examples/streaming.py``. Without a GPU it launches the CPU stand-in
server; set ``SGLANG_URL`` (and ``SGLANG_API_KEY``) to use a running server, or run it on a GPU
machine with SGLang installed to launch the real thing (``SGLANG_MODEL`` picks the model;
``SGLANG_BACKEND_STANDIN=1`` forces the stand-in).
"""

from __future__ import annotations

import asyncio
import sys

from _where import MODEL, model_options

from sglang_backend import AsyncSGLangModel


async def main() -> None:
    question = " ".join(sys.argv[1:]) or "Tell me a short story about a lighthouse."
    # {"stream": True} makes every run() stream (CAMEL compatible); run(..., stream=True)
    # does it for one call.
    async with AsyncSGLangModel(MODEL, {"stream": True, "max_tokens": 200},
                                **model_options()) as model:
        stream = await model.run([{"role": "user", "content": question}])
        usage = None
        async with stream:  # closes the HTTP stream even if we stop early
            async for chunk in stream:
                for choice in chunk.choices:
                    print(choice.delta.content or "", end="", flush=True)
                if chunk.usage is not None:  # the final chunk carries the usage
                    usage = chunk.usage
        print()
        if usage is not None:
            print(f"[{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens]")


if __name__ == "__main__":
    asyncio.run(main())
