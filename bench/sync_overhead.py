"""Metric 6: the sync facade's overhead per call over the async model.

Blocks of sequential calls alternate between ``await AsyncSGLangModel.run`` (driven by an
``asyncio.Runner`` in this thread) and ``SGLangModel.run`` (its own loop thread, reached through
anyio's blocking portal), both in url mode against the same server with the same api_key.
Overhead = median per-call time of a sync block minus that of the neighbouring async block
(each call timed alone; paired by block, then the median over pairs). Call from a thread
with no running event loop.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import common

KEY = "bench-key"


async def _noop() -> None:
    return None


def _hand_off_floor(smodel: Any, calls: int = 2000) -> dict[str, Any]:
    """Diagnosis, no server involved: the facade's portal round trip on a no-op coroutine,
    and a bare ``asyncio.run_coroutine_threadsafe`` round trip to a loop thread."""
    import threading

    portal = smodel._runtime.portal  # private: bench diagnosis only
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        portal.call(_noop)
        times.append(time.perf_counter() - t0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    bare = []
    try:
        for _ in range(calls):
            t0 = time.perf_counter()
            asyncio.run_coroutine_threadsafe(_noop(), loop).result()
            bare.append(time.perf_counter() - t0)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    return {"portal_noop_us": common.summary([t * 1e6 for t in times], 1),
            "run_coroutine_threadsafe_noop_us": common.summary([t * 1e6 for t in bare], 1)}


def measure(url: str, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    from sglang_backend import AsyncSGLangModel, SGLangModel

    blocks, per_block = (10, 20) if quick else (40, 25)
    config = {"max_tokens": common.MAX_TOKENS}
    async_per: list[float] = []
    sync_per: list[float] = []
    async_cpu: list[float] = []
    sync_cpu: list[float] = []
    with asyncio.Runner() as runner:
        amodel = AsyncSGLangModel(common.MODEL, config, api_key=KEY, url=url)
        runner.run(amodel.start())
        smodel = SGLangModel(common.MODEL, config, api_key=KEY, url=url)
        try:
            smodel.start()

            async def async_block() -> list[float]:
                times = []
                for _ in range(per_block):
                    t0 = time.perf_counter()
                    await amodel.run(common.MESSAGES, stream=False)
                    times.append(time.perf_counter() - t0)
                return times

            def sync_block() -> list[float]:
                times = []
                for _ in range(per_block):
                    t0 = time.perf_counter()
                    smodel.run(common.MESSAGES, stream=False)
                    times.append(time.perf_counter() - t0)
                return times

            runner.run(async_block())  # warm-up
            sync_block()
            for b in range(blocks):
                order = ("a", "s") if b % 2 == 0 else ("s", "a")
                for which in order:
                    c0 = time.process_time()
                    # each call timed on its own; the block's median resists outliers
                    times = runner.run(async_block()) if which == "a" else sync_block()
                    wall = statistics.median(times) * 1e6
                    cpu = (time.process_time() - c0) / per_block * 1e6
                    (async_per if which == "a" else sync_per).append(wall)
                    (async_cpu if which == "a" else sync_cpu).append(cpu)
            hand_off = _hand_off_floor(smodel)
            log(f"  sync facade: async {statistics.median(async_per):.0f}µs/call, "
                f"sync {statistics.median(sync_per):.0f}µs/call")
        finally:
            smodel.close()
            runner.run(amodel.aclose())
    return {
        **hand_off,
        "blocks": blocks,
        "calls_per_block": per_block,
        "async_us_per_call": common.summary(async_per, 1),
        "sync_us_per_call": common.summary(sync_per, 1),
        "overhead_us_per_call": common.summary(
            [s - a for s, a in zip(sync_per, async_per, strict=True)], 1),
        "async_cpu_us_per_call": common.summary(async_cpu, 1),
        "sync_cpu_us_per_call": common.summary(sync_cpu, 1),
        "overhead_cpu_us_per_call": common.summary(
            [s - a for s, a in zip(sync_cpu, async_cpu, strict=True)], 1),
    }
