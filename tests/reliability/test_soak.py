"""Soak: many requests, mixed streaming/non-streaming, at high concurrency, across idle-stop /
relaunch cycles and injected crashes. Nothing is lost without a typed error, and nothing
grows (open fds, threads, child processes).

The short form always runs (CI); ``pytest --soak`` (``nox -s soak``) runs the long one.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from sglang_backend import AsyncSGLangModel, ServerConfig, ServerEvent, ServerState

from ..conftest import MODEL
from ._support import Tally, resources, until

Standin = Callable[..., ServerConfig]
IDLE = 0.5
# Allowed difference between the start and the end of the measured phase: a pooled keep-alive
# connection or an executor thread more or less is not a leak; a leak grows with the requests.
FD_SLACK, THREAD_SLACK = 4, 2


@dataclass
class Plan:
    requests: int
    idle_cycles: int
    crashes: int
    concurrency: int = 64
    warmup: int = 200  # two segments, each > concurrency


async def _segment(model: AsyncSGLangModel, tally: Tally, first: int, count: int,
                   concurrency: int, crash_at: int | None) -> None:
    """Send requests ``first .. first+count-1`` with ``concurrency`` workers; SIGKILL the
    server's process group when request ``crash_at`` is about to be sent."""
    next_index = first
    end = first + count

    async def one(index: int) -> None:
        try:
            if index % 2:
                stream = await model.run([{"role": "user", "content": f"soak {index}"}],
                                         stream=True)
                async with stream:
                    chunks = [chunk async for chunk in stream]
                assert chunks[-1].usage is not None  # the stream really finished
            else:
                reply = await model.run([{"role": "user", "content": f"soak {index}"}])
                assert reply.choices[0].message.content
            tally.success()
        except Exception as exc:
            tally.failure(exc)

    async def worker() -> None:
        nonlocal next_index
        while next_index < end:
            index = next_index
            next_index += 1
            if index == crash_at and model.pid is not None:
                os.killpg(model.pid, signal.SIGKILL)
            await one(index)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _idle_stop(model: AsyncSGLangModel) -> None:
    await until(lambda: model.state is ServerState.STOPPED, timeout=60)


async def _soak(standin: Standin, plan: Plan) -> None:
    events: list[ServerEvent] = []
    model = AsyncSGLangModel(
        MODEL, {"max_tokens": 12},
        server=standin(inactivity_timeout=IDLE, shutdown_timeout=2.0),
        on_event=events.append,
    )
    tally = Tally()
    async with model:
        # Warm-up: every path once (requests, streams, an idle stop and relaunch, a crash),
        # so lazily created threads exist before the baseline. Both baselines are taken right
        # after an idle stop, when the library has replaced its connection pool (keep-alive
        # connections to a dead server would otherwise linger in CLOSE_WAIT).
        await _segment(model, tally, 0, plan.warmup // 2, plan.concurrency, crash_at=plan.warmup // 4)
        await _idle_stop(model)
        await _segment(model, tally, plan.warmup // 2, plan.warmup - plan.warmup // 2,
                       plan.concurrency, crash_at=None)
        await _idle_stop(model)
        gc.collect()
        before = resources()
        warm_tally = (tally.ok, dict(tally.typed), len(tally.untyped))
        tally = Tally()
        # Measured phase: segments separated by idle stops, crashes injected mid-segment.
        idle_left, crash_left, order = plan.idle_cycles, plan.crashes, []
        while idle_left or crash_left:  # idle, crash, idle, crash, idle ...
            if idle_left:
                order.append("idle")
                idle_left -= 1
            if crash_left:
                order.append("crash")
                crash_left -= 1
        segments = len(order) + 1
        size = plan.requests // segments
        started = time.monotonic()
        sent = 0
        for position in range(segments):
            count = size if position < segments - 1 else plan.requests - sent
            disruption = order[position] if position < len(order) else None
            crash_at = sent + count // 2 if disruption == "crash" else None
            await _segment(model, tally, sent, count, plan.concurrency, crash_at)
            sent += count
            if disruption == "idle":
                await _idle_stop(model)
        duration = time.monotonic() - started
        await _idle_stop(model)
        gc.collect()
        after = resources()
        launches = model.server.launches if model.server else 0
    kinds = [e.kind for e in events]
    report = (
        f"soak: {sent} requests at concurrency {plan.concurrency} in {duration:.1f} s: {tally}; "
        f"warm-up {plan.warmup} (ok, typed, untyped)={warm_tally}; idle stops "
        f"{kinds.count('idle_stopped')}, crashes {kinds.count('crashed')}, launches {launches}; "
        f"resources before {before} after {after}"
    )
    print(report)
    assert sent == plan.requests
    assert tally.total == plan.requests, report
    assert not tally.untyped, f"{report}\n{tally.untyped[:3]!r}"
    assert tally.ok >= plan.requests - plan.crashes * plan.concurrency * 3, report
    # The disruptions really happened (warm-up: 2 idle stops, 1 crash).
    assert kinds.count("idle_stopped") >= plan.idle_cycles + 2, report
    assert kinds.count("crashed") >= plan.crashes + 1, report
    assert after["children"] <= before["children"], report
    assert after["fds"] <= before["fds"] + FD_SLACK, report
    assert after["threads"] <= before["threads"] + THREAD_SLACK, report


async def test_soak_short(standin: Standin) -> None:
    await _soak(standin, Plan(requests=500, idle_cycles=1, crashes=1))


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_soak_long(standin: Standin, soak_only: None) -> None:
    await _soak(standin, Plan(requests=5000, idle_cycles=3, crashes=2))
