"""The same faults through the blocking facade (SGLangModel): typed errors cross the portal,
threads recover, Ctrl-C cancels cleanly, close is bounded."""

from __future__ import annotations

import _thread
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sglang_backend import (
    ModelClosedError,
    PortInUseError,
    ServerConfig,
    ServerCrashedError,
    ServerEvent,
    ServerStartError,
    ServerStartTimeout,
    ServerState,
    SGLangError,
    SGLangModel,
)

from ..conftest import MODEL, read_events
from ._support import HELLO, LONG_PROMPT, Tally, alive, sync_until, tree

Standin = Callable[..., ServerConfig]
SLACK = 10.0


def _drain(model: SGLangModel, messages: object = HELLO) -> int:
    with model.run(messages, stream=True) as stream:  # type: ignore[union-attr]
        return sum(1 for _ in stream)


def _main_thread_only() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread (interrupt_main)")


def test_slow_load_threads_share_one_start(standin: Standin) -> None:
    model = SGLangModel(MODEL, server=standin(load_seconds=2))
    try:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: model.run(HELLO), range(16)))
        assert all(r.choices[0].message.content for r in replies)  # type: ignore[union-attr]
        server = model.async_model.server
        assert server is not None
        assert server.launches == 1
    finally:
        model.close()


def test_fail_at_load_is_typed_across_the_portal_and_retries(standin: Standin) -> None:
    model = SGLangModel(MODEL, server=standin(fail_at_load="no such model (stand-in)"))
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(model.run, HELLO) for _ in range(4)]
        errors = [f.exception() for f in futures]
        assert all(isinstance(e, ServerStartError) for e in errors), errors
        with pytest.raises(ServerStartError, match="no such model"):
            model.start()
        assert model.state is ServerState.FAILED
        server = model.async_model.server
        assert server is not None
        assert server.launches == 2
    finally:
        model.close()
    assert model.state is ServerState.CLOSED


def test_never_healthy_is_a_timeout(standin: Standin, events_file: Path) -> None:
    model = SGLangModel(MODEL, server=standin(warmup_seconds=120, startup_timeout=2.0))
    try:
        started = time.monotonic()
        with pytest.raises(ServerStartTimeout):
            model.run(HELLO)
        assert time.monotonic() - started < 2.0 + SLACK
        import psutil

        pids = {e["pid"] for e in read_events(events_file)}
        assert pids
        assert not alive([psutil.Process(p) for p in pids if psutil.pid_exists(p)])
    finally:
        model.close()


def test_crash_mid_request_and_mid_stream_from_threads(standin: Standin) -> None:
    with SGLangModel(MODEL, {"max_tokens": 20},
                     server=standin(crash_after=3, token_delay=0.02)) as model:
        tally = Tally()

        def one(i: int) -> None:
            try:
                if i % 2:
                    _drain(model)
                else:
                    model.run(HELLO)
                tally.success()
            except Exception as exc:
                tally.failure(exc)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(8)))
        assert tally.total == 8
        assert not tally.untyped, tally
        assert tally.typed["ServerCrashedError"] >= 1, tally
        assert model.async_model.server is not None
        assert model.async_model.server.inflight == 0


def test_crash_mid_stream_sync_iterator(standin: Standin) -> None:
    with SGLangModel(MODEL, {"max_tokens": 40},
                     server=standin(crash_after=1, token_delay=0.05)) as model:
        first = model.pid
        assert _drain(model) > 2
        received = 0

        def consume() -> None:
            nonlocal received
            for _ in model.run(HELLO, stream=True):  # type: ignore[union-attr]
                received += 1

        with pytest.raises(SGLangError) as info:
            consume()
        assert received >= 1
        assert isinstance(info.value, ServerCrashedError), repr(info.value)
        assert _drain(model) > 2
        assert model.pid != first


def test_close_of_sigterm_ignoring_server_is_bounded(standin: Standin) -> None:
    events: list[ServerEvent] = []
    model = SGLangModel(MODEL, server=standin(ignore_sigterm=True, shutdown_timeout=1.0),
                        on_event=events.append)
    model.start()
    procs = tree(model.pid)
    started = time.monotonic()
    model.close()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + SLACK
    assert not alive(procs)
    stopped = next(e for e in events if e.kind == "stopped")
    assert stopped.detail["returncode"] == -signal.SIGKILL


def test_port_taken_is_typed_and_nothing_launched() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        model = SGLangModel(MODEL, server=ServerConfig(port=port))
        try:
            with pytest.raises(PortInUseError, match=str(port)):
                model.run(HELLO)
            assert model.pid is None
            server = model.async_model.server
            assert server is not None
            assert server.launches == 0
        finally:
            model.close()


def test_ctrl_c_during_start_kills_the_tree_and_the_model_stays_usable(
    standin: Standin, events_file: Path
) -> None:
    _main_thread_only()
    model = SGLangModel(MODEL, server=standin(warmup_seconds=1.0))
    try:
        seen: list[int] = []

        def interrupt_when_listening() -> None:
            sync_until(lambda: any(e["event"] == "listening" for e in read_events(events_file)))
            seen.extend(p.pid for p in tree(model.pid))
            _thread.interrupt_main()

        timer = threading.Thread(target=interrupt_when_listening)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            model.start()
        timer.join()
        assert len(seen) >= 3
        import psutil

        assert not alive([psutil.Process(p) for p in seen if psutil.pid_exists(p)])
        assert model.state is ServerState.STOPPED
        reply = model.run(HELLO)
        assert reply.choices[0].message.content  # type: ignore[union-attr]
    finally:
        model.close()


def test_ctrl_c_during_stream_releases_it(standin: Standin) -> None:
    _main_thread_only()
    with SGLangModel(MODEL, {"max_tokens": 60}, server=standin(token_delay=0.05)) as model:
        server = model.async_model.server
        assert server is not None
        stream = model.run(LONG_PROMPT, stream=True)
        next(stream)  # type: ignore[call-overload]
        threading.Timer(0.3, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            for _ in stream:  # type: ignore[union-attr]
                pass
        stream.close()  # type: ignore[union-attr]
        assert server.inflight == 0
        assert _drain(model) > 2


def test_admission_race_from_threads(standin: Standin, soak: bool) -> None:
    events: list[ServerEvent] = []
    cycles = 20 if soak else 5
    tally = Tally()
    offsets = [-0.03, -0.005, 0.0, 0.005, 0.03]
    with SGLangModel(MODEL, server=standin(inactivity_timeout=0.3),
                     on_event=events.append) as model, ThreadPoolExecutor(8) as pool:
        model.run(HELLO)
        last = time.monotonic()

        def one(i: int) -> float:
            time.sleep((i % 4) * 0.004)
            try:
                if i % 3 == 0:
                    _drain(model)
                else:
                    model.run(HELLO)
                tally.success()
            except Exception as exc:
                tally.failure(exc)
            return time.monotonic()

        for cycle in range(cycles):
            sync_until(lambda: model.state is ServerState.READY)
            time.sleep(max(0.0, last + 0.3 + offsets[cycle % len(offsets)] - time.monotonic()))
            last = max(pool.map(one, range(8)))
    kinds = [e.kind for e in events]
    assert tally.ok == cycles * 8, f"{tally} {tally.untyped}"
    assert kinds.count("idle_stopped") >= 1, kinds
    assert "crashed" not in kinds


def test_close_from_another_thread_while_threads_are_in_flight(standin: Standin) -> None:
    model = SGLangModel(MODEL, {"max_tokens": 30},
                        server=standin(token_delay=0.1, shutdown_timeout=1.0))
    model.start()
    procs = tree(model.pid)
    server = model.async_model.server
    assert server is not None

    def stream_all() -> int:
        return sum(1 for _ in model.run(LONG_PROMPT, stream=True))  # type: ignore[union-attr]

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(model.run, LONG_PROMPT) for _ in range(5)]
        futures += [pool.submit(stream_all) for _ in range(3)]
        sync_until(lambda: server.inflight == 8)
        started = time.monotonic()
        model.close()
        elapsed = time.monotonic() - started
        errors = [f.exception(timeout=30) for f in futures]
    assert all(isinstance(e, ModelClosedError) for e in errors), errors
    assert elapsed < 1.0 + SLACK
    assert not alive(procs)
    with pytest.raises(ModelClosedError):
        model.run(HELLO)
