"""Metric 8: client RSS after many requests vs after a few (run in a fresh interpreter).

``python bench/memory.py --url URL --client model|openai --small 100 --large 10000`` prints one
JSON object: RSS (after ``gc.collect()``) once ``small`` requests are done and once ``large``
are done, at concurrency 16. The raw ``AsyncOpenAI`` client is the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
from typing import Any

import common
import psutil

KEY = "bench-key"


async def measure(url: str, client: str, small: int, large: int, conc: int) -> dict[str, Any]:
    import openai

    from sglang_backend import AsyncSGLangModel

    raw: openai.AsyncOpenAI | None = None
    model: AsyncSGLangModel | None = None
    if client == "model":
        model = AsyncSGLangModel(common.MODEL, {"max_tokens": common.MAX_TOKENS},
                                 api_key=KEY, url=url)
        await model.start()
    else:
        raw = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY)

    async def one() -> None:
        if model is not None:
            await model.run(common.MESSAGES, stream=False)
        else:
            assert raw is not None
            await raw.chat.completions.create(
                model=common.MODEL, messages=common.MESSAGES,  # type: ignore[arg-type]
                max_tokens=common.MAX_TOKENS)

    async def batch(n: int) -> None:
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                await one()

        await asyncio.gather(*(worker() for _ in range(conc)))

    proc = psutil.Process()
    try:
        await batch(small)
        gc.collect()
        rss_small = proc.memory_info().rss
        await batch(large - small)
        gc.collect()
        rss_large = proc.memory_info().rss
    finally:
        if model is not None:
            await model.aclose()
        if raw is not None:
            await raw.close()
    return {
        "client": client,
        "requests_small": small,
        "requests_large": large,
        "rss_small_mb": rss_small / 2**20,
        "rss_large_mb": rss_large / 2**20,
        "growth_mb": (rss_large - rss_small) / 2**20,
        "growth_kb_per_1k_requests": (rss_large - rss_small) / 1024 / ((large - small) / 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--client", choices=["model", "openai"], default="model")
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    result = asyncio.run(measure(args.url, args.client, args.small, args.large, args.concurrency))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
