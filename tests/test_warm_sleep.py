"""The warm sleep: memory released after sleep_timeout, resumed before the next request, the
full stop still after inactivity_timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from sglang_backend import AsyncSGLangModel, ConfigError, ServerConfig, ServerState, SGLangModel
from sglang_backend.server import ServerEvent

from ._shapes import HELLO
from .conftest import MODEL, read_events

Standin = Callable[..., ServerConfig]


async def _until(predicate: Callable[[], bool], seconds: float = 15.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def test_sleep_timeout_must_come_before_the_stop() -> None:
    with pytest.raises(ConfigError, match="sleep_timeout"):
        ServerConfig(sleep_timeout=10, inactivity_timeout=10)


def test_warm_sleep_switches_are_added_once_and_can_be_refused() -> None:
    def args(**options: object) -> list[str]:
        return ServerConfig(**options).server_args(MODEL, port=1, api_key=None)  # type: ignore[arg-type]

    assert "--enable-memory-saver" not in args()
    both = args(sleep_timeout=5)
    assert both.count("--enable-memory-saver") == 1
    assert both.count("--enable-weights-cpu-backup") == 1
    given = args(sleep_timeout=5, extra_args=["--enable-memory-saver"])
    assert given.count("--enable-memory-saver") == 1
    refused = args(sleep_timeout=5, enable_weights_cpu_backup=False)
    assert "--enable-weights-cpu-backup" not in refused
    assert "--enable-memory-saver" in refused
    pooled = ServerConfig().for_warm_sleep()
    assert (pooled.enable_memory_saver, pooled.enable_weights_cpu_backup) == (True, True)
    kept = ServerConfig(enable_weights_cpu_backup=False).for_warm_sleep()
    assert kept.enable_weights_cpu_backup is False


async def test_sleep_then_resume_before_the_request_then_the_full_stop(
    standin: Standin, events_file: Path
) -> None:
    events: list[ServerEvent] = []
    config = standin(sleep_timeout=0.5, inactivity_timeout=3.0)
    async with AsyncSGLangModel(MODEL, server=config, on_event=events.append) as model:
        pid = model.pid
        await _until(lambda: model.state is ServerState.SLEEPING)
        await _until(lambda: any(e.kind == "sleeping" for e in events))
        # Launched with the switches SGLang needs to free memory and restore the weights.
        assert "--enable-memory-saver" in config.server_args(MODEL, port=1, api_key=None)
        assert "--enable-weights-cpu-backup" in config.server_args(MODEL, port=1, api_key=None)
        assert model.pid == pid  # the process is kept
        assert [e["event"] for e in read_events(events_file)].count("release_memory") == 1

        reply = await model.run(HELLO)  # wakes it first
        assert reply.choices[0].message.content
        assert model.state is ServerState.READY
        lines = [e["event"] for e in read_events(events_file)]
        resumed = lines.index("resume_memory")
        requests = [i for i, kind in enumerate(lines) if kind == "request"]
        assert requests
        assert resumed < requests[-1]
        assert model.pid == pid

        await _until(lambda: model.state is ServerState.SLEEPING)  # asleep again ...
        await _until(lambda: model.state is ServerState.STOPPED)  # ... then stopped
        kinds = [e.kind for e in events]
        assert kinds.index("awake") < kinds.index("idle_stopped")
        assert kinds.count("sleeping") == 2


def test_the_facade_wakes_a_sleeping_server(standin: Standin, events_file: Path) -> None:
    config = standin(sleep_timeout=0.4, inactivity_timeout=30.0)
    with SGLangModel(MODEL, server=config) as model:
        asyncio.run(_until(lambda: model.state is ServerState.SLEEPING))
        assert model.run(HELLO).choices
        assert model.state is ServerState.READY
        assert "resume_memory" in [e["event"] for e in read_events(events_file)]


async def test_sleep_now_releases_memory_and_the_next_request_wakes_it(
    standin: Standin, events_file: Path
) -> None:
    events: list[ServerEvent] = []
    async with AsyncSGLangModel(MODEL, server=standin(), on_event=events.append) as model:
        pid = model.pid
        stream = await model.run(HELLO, stream=True)
        assert await model.sleep() is False  # a stream is open: it stays awake
        assert model.state is ServerState.READY
        await stream.aclose()
        assert await model.sleep() is True
        assert await model.sleep() is True  # already asleep: nothing more to release
        assert model.state is ServerState.SLEEPING
        assert model.pid == pid
        assert [e["event"] for e in read_events(events_file)].count("release_memory") == 1
        assert (await model.run(HELLO)).choices
        assert model.state is ServerState.READY
        assert model.pid == pid
        assert [e.kind for e in events].count("awake") == 1


async def test_sleep_in_connect_mode_is_not_ours(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, server=standin()) as launched:
        assert launched.base_url is not None
        remote = AsyncSGLangModel(MODEL, url=launched.base_url, api_key=launched.api_key)
        async with remote:
            assert await remote.sleep() is False
        assert launched.state is ServerState.READY


def test_the_facade_sleeps_now(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin()) as model:
        model.run(HELLO)
        assert model.sleep() is True
        assert model.state is ServerState.SLEEPING
        assert model.run(HELLO).choices
        assert model.state is ServerState.READY
