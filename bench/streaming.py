"""Metric 5: per-chunk client overhead of a 500-token stream, against raw AsyncOpenAI.

One stream at a time (concurrency 1), ``max_tokens=500``. The stand-in echoes at most 64 words
of the prompt and then emits EOS, so a long prompt alone gives ~80 tokens: the request also
sets SGLang's ``ignore_eos`` sampling parameter, and ``usage.completion_tokens`` is checked to
be 500. Variants: raw ``AsyncOpenAI`` stream, ``AsyncSGLangModel`` stream (``ChatStream``),
``SGLangModel``'s blocking iterator, and the blocking ``openai.OpenAI`` stream (the control
the iterator is held to; both read in a worker thread). Rounds interleave;
per-chunk figures are client CPU (``time.process_time()``) and wall time divided by chunks.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import common

TOKENS = 500
PROMPT = [{"role": "user", "content": " ".join(f"word{i}" for i in range(600))}]
KEY = "bench-key"


async def measure(url: str, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    import openai

    from sglang_backend import AsyncSGLangModel, SGLangModel

    streams, rounds = (3, 2) if quick else (10, 5)
    raw = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY)
    config = {"max_tokens": TOKENS, "ignore_eos": True}
    model = AsyncSGLangModel(common.MODEL, config, api_key=KEY, url=url)
    sync_model = SGLangModel(common.MODEL, config, api_key=KEY, url=url)
    await model.start()
    await asyncio.to_thread(sync_model.start)

    async def raw_stream() -> tuple[int, int]:
        stream = await raw.chat.completions.create(
            model=common.MODEL, messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=TOKENS, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks, tokens = 0, 0
        async for chunk in stream:
            chunks += 1
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return chunks, tokens

    async def model_stream() -> tuple[int, int]:
        chunks, tokens = 0, 0
        async with await model.run(PROMPT, stream=True) as stream:
            async for chunk in stream:
                chunks += 1
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
        return chunks, tokens

    def sync_stream_blocking() -> tuple[int, int]:
        chunks, tokens = 0, 0
        stream = sync_model.run(PROMPT, stream=True)
        for chunk in stream:  # type: ignore[union-attr]
            chunks += 1
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return chunks, tokens

    async def sync_stream() -> tuple[int, int]:
        return await asyncio.to_thread(sync_stream_blocking)

    raw_sync = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)

    def raw_sync_stream_blocking() -> tuple[int, int]:
        chunks, tokens = 0, 0
        stream = raw_sync.chat.completions.create(
            model=common.MODEL, messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=TOKENS, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            chunks += 1
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return chunks, tokens

    async def raw_sync_stream() -> tuple[int, int]:
        return await asyncio.to_thread(raw_sync_stream_blocking)

    variants = {"raw_openai": raw_stream, "model": model_stream, "sync_model": sync_stream,
                "raw_sync_openai": raw_sync_stream}
    data: dict[str, dict[str, list[float]]] = {
        name: {"cpu_us_per_chunk": [], "wall_us_per_chunk": [], "chunks": [], "tokens": []}
        for name in variants
    }
    try:
        for func in variants.values():  # warm-up
            await func()
        for r in range(rounds):
            names = list(variants) if r % 2 == 0 else list(variants)[::-1]
            for name in names:
                gc.collect()
                cpu = wall = 0.0
                chunks = 0
                for _ in range(streams):
                    t0, c0 = time.perf_counter(), time.process_time()
                    n, tokens = await variants[name]()
                    wall += time.perf_counter() - t0
                    cpu += time.process_time() - c0
                    chunks += n
                    data[name]["tokens"].append(tokens)
                data[name]["cpu_us_per_chunk"].append(cpu / chunks * 1e6)
                data[name]["wall_us_per_chunk"].append(wall / chunks * 1e6)
                data[name]["chunks"].append(chunks / streams)
            log(f"  streaming round {r + 1}/{rounds}: " + ", ".join(
                f"{n}={data[n]['cpu_us_per_chunk'][-1]:.1f}µs/chunk" for n in variants))
    finally:
        await raw.close()
        raw_sync.close()
        await model.aclose()
        await asyncio.to_thread(sync_model.close)
    base_cpu = data["raw_openai"]["cpu_us_per_chunk"]
    out: dict[str, Any] = {"streams_per_round": streams, "rounds": rounds,
                           "max_tokens": TOKENS, "variants": {}}
    sync_base = data["raw_sync_openai"]["cpu_us_per_chunk"]
    for name, series in data.items():
        out["variants"][name] = {
            "cpu_us_per_chunk": common.summary(series["cpu_us_per_chunk"], 2),
            "wall_us_per_chunk": common.summary(series["wall_us_per_chunk"], 2),
            "chunks_per_stream": common.summary(series["chunks"], 1),
            "completion_tokens": common.summary(series["tokens"], 0),
            "overhead_cpu_us_per_chunk": common.summary(
                [a - b for a, b in zip(series["cpu_us_per_chunk"], base_cpu, strict=True)], 2),
            "cpu_ratio": common.summary(
                [a / b for a, b in zip(series["cpu_us_per_chunk"], base_cpu, strict=True)], 3),
        }
    # The blocking iterator against the blocking SDK's own stream, paired by round.
    out["variants"]["sync_model"]["cpu_vs_blocking_sdk"] = common.summary(
        [a / b for a, b in zip(data["sync_model"]["cpu_us_per_chunk"], sync_base, strict=True)], 3)
    return out
