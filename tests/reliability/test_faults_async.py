"""Fault injection through the public async API: every failure is typed, bounded, and the model
recovers (or is cleanly closed). Real stand-in processes, real HTTP, no mocks."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from sglang_backend import (
    AsyncSGLangModel,
    ModelClosedError,
    PortInUseError,
    ServerConfig,
    ServerCrashedError,
    ServerEvent,
    ServerStartError,
    ServerStartTimeout,
    ServerState,
    SGLangError,
)
from sglang_backend._http import httpx

from ..conftest import MODEL, read_events
from ._support import HELLO, LONG_PROMPT, Tally, alive, tree, until

Standin = Callable[..., ServerConfig]
SLACK = 10.0  # seconds added to any bound the library promises (2 shared cores)


def _untyped(exc: BaseException) -> bool:
    return not isinstance(exc, SGLangError) or isinstance(
        exc, (openai.APIError, httpx.HTTPError)
    )


async def _stream_all(model: AsyncSGLangModel, messages: Any = HELLO) -> int:
    chunks = 0
    stream = await model.run(messages, stream=True)
    async with stream:
        async for _ in stream:
            chunks += 1
    return chunks


def _still_running(events_file: Path) -> list[int]:
    """Stand-in pids from the events file that are still running."""
    import psutil

    pids = {e["pid"] for e in read_events(events_file)}
    return [p for p in pids if alive([psutil.Process(p)] if psutil.pid_exists(p) else [])]


# -- slow load, fail at load, never healthy ------------------------------------------------
async def test_slow_load_shares_one_start_and_keeps_the_loop_free(standin: Standin) -> None:
    events: list[ServerEvent] = []
    model = AsyncSGLangModel(MODEL, server=standin(load_seconds=3), on_event=events.append)
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    beat = asyncio.ensure_future(heartbeat())
    try:
        started = time.monotonic()
        replies = await asyncio.gather(*(model.run(HELLO) for _ in range(20)))
        elapsed = time.monotonic() - started
        assert all(r.choices[0].message.content for r in replies)
        assert model.server is not None
        assert model.server.launches == 1
        assert elapsed >= 3.0  # the load really happened
        # ~60 ticks expected over 3 s; a blocked loop would give ~0. Counts, generously.
        assert ticks >= 10, ticks
        phases = [e.detail.get("phase") for e in events if e.kind == "phase"]
        assert "loading_weights" in phases
        assert [e.kind for e in events].count("ready") == 1
    finally:
        beat.cancel()
        await model.aclose()


async def test_fail_at_load_every_waiter_gets_the_typed_error_and_retry_relaunches(
    standin: Standin, events_file: Path
) -> None:
    model = AsyncSGLangModel(MODEL, server=standin(fail_at_load="weights are corrupt (stand-in)"))
    try:
        results = await asyncio.gather(*(model.run(HELLO) for _ in range(10)),
                                       return_exceptions=True)
        assert all(isinstance(r, ServerStartError) for r in results), results
        assert all("weights are corrupt (stand-in)" in str(r) for r in results)
        assert model.server is not None
        assert model.server.launches == 1  # ten waiters, one launch
        assert model.state is ServerState.FAILED
        # The next call tries again (a fresh launch), and fails the same typed way.
        with pytest.raises(ServerStartError) as info:
            await model.run(HELLO)
        assert info.value.returncode == 1
        assert model.server.launches == 2
        assert model.request_path.calls_in_progress == 0  # failed calls do not stay registered
        assert not _still_running(events_file)
    finally:
        await model.aclose()


async def test_never_healthy_times_out_within_bound_and_kills_the_tree(
    standin: Standin, events_file: Path
) -> None:
    model = AsyncSGLangModel(MODEL, server=standin(warmup_seconds=120, startup_timeout=2.0))
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(model.run(HELLO) for _ in range(5)),
                                       return_exceptions=True)
        elapsed = time.monotonic() - started
        assert all(isinstance(r, ServerStartTimeout) for r in results), results
        assert all(isinstance(r, TimeoutError) for r in results)
        assert elapsed < 2.0 + SLACK
        err = results[0]
        assert isinstance(err, ServerStartTimeout)
        assert err.log_tail, "a timeout must show the server's last output"
        assert any(e["event"] == "listening" for e in read_events(events_file))
        assert not _still_running(events_file)
        assert model.server is not None
        assert model.server.launches == 1
    finally:
        await model.aclose()


# -- crashes --------------------------------------------------------------------------------
async def test_crash_with_requests_in_flight_is_typed_then_relaunches(standin: Standin) -> None:
    events: list[ServerEvent] = []
    model = AsyncSGLangModel(
        MODEL, {"max_tokens": 20}, server=standin(crash_after=4, token_delay=0.02),
        on_event=events.append,
    )
    async with model:
        first = model.pid
        tally = Tally()

        async def one(i: int) -> None:
            try:
                if i % 2:
                    await _stream_all(model)
                else:
                    await model.run(HELLO)
                tally.success()
            except Exception as exc:
                tally.failure(exc)

        await asyncio.gather(*(one(i) for i in range(12)))
        assert tally.total == 12
        assert not tally.untyped, tally
        assert tally.typed["ServerCrashedError"] >= 1, tally
        assert "crashed" in [e.kind for e in events]
        assert model.server is not None
        assert model.server.inflight == 0
        reply = await model.run(HELLO)  # relaunches if the last incarnation died too
        assert reply.choices[0].message.content
        assert model.pid != first
        assert model.server.launches >= 2


async def test_crash_mid_stream_is_typed_and_the_next_call_relaunches(standin: Standin) -> None:
    model = AsyncSGLangModel(MODEL, {"max_tokens": 40}, server=standin(crash_after=1, token_delay=0.05))
    async with model:
        first = model.pid
        assert await _stream_all(model) > 2  # request 1 is fine
        stream = await model.run(HELLO, stream=True)
        received = 0

        async def consume() -> None:
            nonlocal received
            async for _ in stream:
                received += 1

        with pytest.raises(SGLangError) as info:
            await consume()
        assert received >= 1, "the crash should come mid-stream, after some chunks"
        assert isinstance(info.value, ServerCrashedError), repr(info.value)
        assert not _untyped(info.value)
        assert stream.closed
        assert model.server is not None
        assert model.server.inflight == 0
        assert await _stream_all(model) > 2  # relaunched
        assert model.pid != first
        assert model.server.launches == 2


async def test_crash_by_sigkill_of_the_group_fails_open_streams_typed(standin: Standin) -> None:
    import os
    import signal

    model = AsyncSGLangModel(MODEL, {"max_tokens": 60}, server=standin(token_delay=0.05))
    async with model:
        pid = model.pid
        assert pid is not None
        procs = tree(pid)
        streams = [await model.run(HELLO, stream=True) for _ in range(6)]
        for stream in streams:
            await stream.__anext__()
        assert model.server is not None
        assert model.server.inflight == 6
        os.killpg(pid, signal.SIGKILL)
        errors: list[BaseException] = []
        for stream in streams:
            try:
                async for _ in stream:
                    pass
            except Exception as exc:
                errors.append(exc)
        assert len(errors) == 6
        assert all(isinstance(e, ServerCrashedError) for e in errors), errors
        assert model.server.inflight == 0
        assert not alive(procs)
        reply = await model.run(HELLO)
        assert reply.choices[0].message.content
        assert model.server.launches == 2


# -- stop of a server that ignores SIGTERM ----------------------------------------------------
async def test_idle_stop_of_sigterm_ignoring_server_is_bounded_then_relaunches(
    standin: Standin,
) -> None:
    events: list[ServerEvent] = []
    model = AsyncSGLangModel(
        MODEL,
        server=standin(ignore_sigterm=True, shutdown_timeout=1.0, inactivity_timeout=0.5),
        on_event=events.append,
    )
    async with model:
        procs = tree(model.pid)
        await model.run(HELLO)
        await until(lambda: model.state is ServerState.STOPPED, timeout=30)
        stopped = next(e for e in events if e.kind == "idle_stopped")
        assert stopped.detail["returncode"] == -9  # SIGTERM ignored: SIGKILLed after the grace
        assert 0.9 <= stopped.detail["duration"] < 1.0 + SLACK
        assert not alive(procs)
        reply = await model.run(HELLO)
        assert reply.choices[0].message.content
        procs = tree(model.pid)
    assert not alive(procs)


# -- port taken ---------------------------------------------------------------------------
async def test_port_squatted_while_stopped_is_typed_and_recovers(standin: Standin) -> None:
    model = AsyncSGLangModel(MODEL, server=standin(inactivity_timeout=0.5))
    async with model:
        url = model.base_url
        assert url is not None
        port = int(url.rsplit(":", 1)[1])
        await model.run(HELLO)
        await until(lambda: model.state is ServerState.STOPPED, timeout=30)
        assert model.server is not None
        launches = model.server.launches
        # Another program grabs the port while our server is stopped (possible: our
        # reservation is bound but not listening, and the squatter uses SO_REUSEADDR too).
        squatter = socket.socket()
        try:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(PortInUseError) as info:
                await model.run(HELLO)
            assert str(port) in str(info.value)
            assert model.server.launches == launches  # refused before launching
            assert model.pid is None
        finally:
            squatter.close()
        reply = await model.run(HELLO)
        assert reply.choices[0].message.content
        assert model.base_url == url


# -- cancellation -----------------------------------------------------------------------------
async def test_cancelling_one_of_two_start_waiters_keeps_the_start(
    standin: Standin, events_file: Path
) -> None:
    model = AsyncSGLangModel(MODEL, server=standin(warmup_seconds=1.5))
    try:
        first = asyncio.ensure_future(model.run(HELLO))
        second = asyncio.ensure_future(model.run(HELLO))
        await until(lambda: any(e["event"] == "listening" for e in read_events(events_file)))
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        reply = await second
        assert reply.choices[0].message.content
        assert model.server is not None
        assert model.server.launches == 1
        assert model.server.inflight == 0
    finally:
        await model.aclose()


async def test_cancel_every_start_waiter_kills_the_tree_and_the_model_stays_usable(
    standin: Standin, events_file: Path
) -> None:
    model = AsyncSGLangModel(MODEL, server=standin(warmup_seconds=1.0))
    try:
        waiters = [asyncio.ensure_future(model.run(HELLO)) for _ in range(3)]
        await until(lambda: any(e["event"] == "listening" for e in read_events(events_file)))
        assert model.state is ServerState.STARTING
        procs = tree(model.pid)
        assert len(procs) >= 3
        for waiter in waiters:
            waiter.cancel()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        await until(lambda: not alive(procs), timeout=10)
        assert model.state is ServerState.STOPPED
        reply = await model.run(HELLO)
        assert reply.choices[0].message.content
        assert model.server is not None
        assert model.server.launches == 2
    finally:
        await model.aclose()


@pytest.mark.parametrize("streaming", [False, True], ids=["request", "stream"])
async def test_cancel_at_many_points_leaves_nothing_in_flight(
    standin: Standin, streaming: bool
) -> None:
    model = AsyncSGLangModel(MODEL, {"max_tokens": 40}, server=standin(token_delay=0.02))
    async with model:
        server = model.server
        assert server is not None

        async def work() -> None:
            if streaming:
                await _stream_all(model, LONG_PROMPT)
            else:
                await model.run(LONG_PROMPT)

        cancelled = 0
        for delay in (0.0, 0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4):
            task = asyncio.ensure_future(work())
            await asyncio.sleep(delay)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                cancelled += 1
            assert server.inflight == 0, f"after cancelling at {delay}"
            assert not model._streams
        # asyncio.timeout()/wait_for cancel the same way
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):  # builtin TimeoutError only from 3.11
                await asyncio.wait_for(work(), 0.05)
            assert server.inflight == 0
        assert cancelled >= 6  # the earliest ones surely did not finish (0.8 s of tokens)
        assert model.state is ServerState.READY
        assert server.launches == 1
        await work()  # usable
        assert server.inflight == 0


# -- the admission race -------------------------------------------------------------------------
async def _admission_race(model: AsyncSGLangModel, cycles: int, burst: int) -> Tally:
    """Fire bursts at the moment the idle timer (0.3 s) fires, over many cycles."""
    tally = Tally()
    offsets = [-0.04, -0.015, -0.005, 0.0, 0.003, 0.008, 0.015, 0.04]
    last_done = time.monotonic()

    async def one(i: int, jitter: float) -> None:
        nonlocal last_done
        await asyncio.sleep(jitter)
        try:
            if i % 3 == 0:
                await _stream_all(model)
            else:
                await model.run(HELLO)
            tally.success()
        except Exception as exc:  # must not happen; counted and reported
            tally.failure(exc)
        last_done = max(last_done, time.monotonic())

    await model.run(HELLO)
    last_done = time.monotonic()
    for cycle in range(cycles):
        await until(lambda: model.state is ServerState.READY)
        target = last_done + 0.3 + offsets[cycle % len(offsets)]
        await asyncio.sleep(max(0.0, target - time.monotonic()))
        await asyncio.gather(*(one(i, (i % 5) * 0.004) for i in range(burst)))
    return tally


async def test_watchdog_firing_while_requests_arrive_loses_nothing(
    standin: Standin, soak: bool
) -> None:
    events: list[ServerEvent] = []
    model = AsyncSGLangModel(MODEL, server=standin(inactivity_timeout=0.3), on_event=events.append)
    cycles = 40 if soak else 10
    async with model:
        tally = await _admission_race(model, cycles=cycles, burst=16)
        kinds = [e.kind for e in events]
    assert tally.total == cycles * 16
    assert tally.ok == cycles * 16, f"requests failed at the idle boundary: {tally} {tally.untyped}"
    idle_stops = kinds.count("idle_stopped")
    assert idle_stops >= 1, f"no idle stop happened: {kinds}"  # the race was really exercised
    assert kinds.count("relaunching") >= idle_stops - 1
    assert "crashed" not in kinds
    assert "start_failed" not in kinds
    print(f"admission race: {cycles} cycles x 16, {tally}, idle stops {idle_stops}, "
          f"launches {kinds.count('launching') + kinds.count('relaunching')}")


# -- close with requests in flight ----------------------------------------------------------------
@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["graceful", "ignores-sigterm"])
async def test_close_with_requests_in_flight(standin: Standin, ignore_sigterm: bool) -> None:
    shutdown = 1.0
    config = standin(token_delay=0.1, shutdown_timeout=shutdown, ignore_sigterm=ignore_sigterm)
    model = AsyncSGLangModel(MODEL, {"max_tokens": 30}, server=config)
    await model.start()
    procs = tree(model.pid)
    streams_open = 0

    async def consume() -> None:
        nonlocal streams_open
        stream = await model.run(LONG_PROMPT, stream=True)
        streams_open += 1
        async for _ in stream:
            pass

    tasks = [asyncio.ensure_future(model.run(LONG_PROMPT)) for _ in range(10)]
    tasks += [asyncio.ensure_future(consume()) for _ in range(4)]
    server = model.server
    assert server is not None
    await until(lambda: server.inflight == 14 and streams_open == 4)
    started = time.monotonic()
    closing = asyncio.ensure_future(model.aclose())
    late = asyncio.ensure_future(model.run(HELLO))  # arrives while closing
    await closing
    elapsed = time.monotonic() - started
    results = await asyncio.gather(*tasks, late, return_exceptions=True)
    assert all(isinstance(r, ModelClosedError) for r in results), results
    assert elapsed < shutdown + SLACK
    assert model.state is ServerState.CLOSED
    assert server.inflight == 0
    assert not alive(procs)
    with pytest.raises(ModelClosedError):
        await model.run(HELLO)
    print(f"close with 14 in flight (ignore_sigterm={ignore_sigterm}): {elapsed:.2f} s")


async def test_close_during_a_slow_start(standin: Standin) -> None:
    model = AsyncSGLangModel(MODEL, server=standin(load_seconds=30))
    waiters = [asyncio.ensure_future(model.run(HELLO)) for _ in range(3)]
    await until(lambda: model.pid is not None and len(tree(model.pid)) >= 3)
    procs = tree(model.pid)
    started = time.monotonic()
    await model.aclose()
    elapsed = time.monotonic() - started
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, ModelClosedError) for r in results), results
    assert elapsed < 5.0 + SLACK
    assert not alive(procs)
