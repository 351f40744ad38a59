"""AsyncSGLangModel's server lifecycle against the stand-in server (real processes, real HTTP)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from sglang_backend import (
    AsyncSGLangModel,
    ConfigError,
    LaunchCommandNotFoundError,
    ModelClosedError,
    PortInUseError,
    ServerConfig,
    ServerCrashedError,
    ServerEvent,
    ServerStartError,
    ServerStartTimeout,
    ServerState,
)
from sglang_backend._http import httpx

from .conftest import MODEL, read_events

HELLO = [{"role": "user", "content": "Hello there"}]
Standin = Callable[..., ServerConfig]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


async def test_start_ready_and_close(standin: Standin) -> None:
    events: list[ServerEvent] = []
    model = AsyncSGLangModel(MODEL, server=standin(), on_event=events.append)
    assert model.state is ServerState.CREATED
    assert model.pid is None
    async with model:
        assert model.state is ServerState.READY
        pid = model.pid
        assert pid is not None
        assert model.base_url is not None
        assert model.base_url.startswith("http://127.0.0.1:")
        tree = _tree(pid)
        titles = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "sglang::scheduler" in titles
        assert "sglang::detokenizer" in titles
        reply = await model.run(HELLO)
        assert reply.choices[0].message.content
    assert model.state is ServerState.CLOSED
    assert not _alive(tree)
    kinds = [e.kind for e in events]
    assert kinds[0] == "launching"
    assert "ready" in kinds
    assert kinds[-1] == "closed"
    ready = next(e for e in events if e.kind == "ready")
    assert ready.pid == pid
    assert ready.detail["duration"] > 0
    await model.aclose()  # idempotent
    with pytest.raises(ModelClosedError):
        await model.run(HELLO)


async def test_aclose_without_start_is_fine() -> None:
    model = AsyncSGLangModel(MODEL)
    await model.aclose()
    await model.aclose()
    assert model.state is ServerState.CLOSED


async def test_lazy_start_on_first_request(standin: Standin) -> None:
    model = AsyncSGLangModel(MODEL, server=standin())
    try:
        assert model.state is ServerState.CREATED
        reply = await model.run(HELLO)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert model.state is ServerState.READY
    finally:
        await model.aclose()


async def test_fail_at_load_reports_exit_code_and_log_tail(standin: Standin) -> None:
    events: list[ServerEvent] = []
    model = AsyncSGLangModel(
        MODEL, server=standin(fail_at_load="CUDA out of memory (stand-in)"),
        on_event=events.append,
    )
    with pytest.raises(ServerStartError) as info:
        await model.start()
    err = info.value
    assert err.returncode == 1
    assert any("CUDA out of memory (stand-in)" in line for line in err.log_tail)
    assert "CUDA out of memory (stand-in)" in str(err)
    assert "--model-path" in " ".join(err.command)
    assert model.state is ServerState.FAILED
    assert model.api_key is not None
    assert model.api_key not in str(err)
    assert "start_failed" in [e.kind for e in events]
    await model.aclose()


async def test_start_timeout_kills_half_started_tree(standin: Standin, events_file: Path) -> None:
    model = AsyncSGLangModel(MODEL, server=standin(warmup_seconds=60, startup_timeout=2.0))
    with pytest.raises(ServerStartTimeout) as info:
        await model.start()
    assert isinstance(info.value, TimeoutError)
    pids = {e["pid"] for e in read_events(events_file)}
    assert pids, "the stand-in never started"
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    await model.aclose()


async def test_launch_command_not_found_is_immediate() -> None:
    config = ServerConfig(launch_command=["/nonexistent/sglang-launcher"])
    model = AsyncSGLangModel(MODEL, server=config)
    with pytest.raises(LaunchCommandNotFoundError) as info:
        await model.start()
    assert "/nonexistent/sglang-launcher" in str(info.value)
    await model.aclose()


async def test_single_flight_start(standin: Standin, events_file: Path) -> None:
    model = AsyncSGLangModel(MODEL, server=standin())
    try:
        replies = await asyncio.gather(*(model.run(HELLO) for _ in range(50)))
        assert len(replies) == 50
        assert all(r.choices[0].message.content for r in replies)
        assert model.server is not None
        assert model.server.launches == 1
        assert len({e["pid"] for e in read_events(events_file) if e["event"] == "ready"}) == 1
    finally:
        await model.aclose()


async def test_idle_stop_and_transparent_relaunch(standin: Standin) -> None:
    events: list[ServerEvent] = []
    model = AsyncSGLangModel(MODEL, server=standin(inactivity_timeout=0.5), on_event=events.append)
    async with model:
        first_pid = model.pid
        assert first_pid is not None
        await model.run(HELLO)
        deadline = time.monotonic() + 10
        while model.state is not ServerState.STOPPED and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert model.state is ServerState.STOPPED
        assert not _alive(_tree(first_pid))
        assert "idle_stopped" in [e.kind for e in events]
        reply = await model.run(HELLO)
        assert reply.choices[0].message.content
        assert model.pid is not None
        assert model.pid != first_pid
        assert model.server is not None
        assert model.server.launches == 2
        assert "relaunching" in [e.kind for e in events]


async def test_long_request_is_not_idle_stopped(standin: Standin) -> None:
    # 30 tokens x 0.1 s = ~3 s of generation under a 1 s inactivity timeout.
    model = AsyncSGLangModel(
        MODEL, {"max_tokens": 30}, server=standin(token_delay=0.1, inactivity_timeout=1.0)
    )
    async with model:
        pid = model.pid
        long_prompt = [{"role": "user", "content": " ".join(["word"] * 60)}]
        reply = await model.run(long_prompt)
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 30
        assert reply.choices[0].finish_reason == "length"
        assert model.pid == pid
        assert model.server is not None
        assert model.server.launches == 1


async def test_stop_of_sigterm_ignoring_server_is_bounded(standin: Standin) -> None:
    model = AsyncSGLangModel(MODEL, server=standin(ignore_sigterm=True, shutdown_timeout=1.0))
    await model.start()
    assert model.pid is not None
    tree = _tree(model.pid)
    started = time.monotonic()
    await model.aclose()
    elapsed = time.monotonic() - started
    assert not _alive(tree)
    assert elapsed < 10  # generous sanity bound; the real figure lives in bench/


async def test_explicit_port_taken_is_reported_before_launch() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        model = AsyncSGLangModel(MODEL, server=ServerConfig(port=port))
        with pytest.raises(PortInUseError) as info:
            await model.start()
        assert str(port) in str(info.value)
        assert model.pid is None
        await model.aclose()


async def test_crash_mid_request_then_relaunch(standin: Standin) -> None:
    events: list[ServerEvent] = []
    model = AsyncSGLangModel(MODEL, server=standin(crash_after=1), on_event=events.append)
    async with model:
        first = model.pid
        await model.run(HELLO)
        with pytest.raises(ServerCrashedError) as info:
            await model.run(HELLO)
        assert info.value.returncode == -signal.SIGKILL
        assert "crashed" in [e.kind for e in events] or model.state is ServerState.FAILED
        reply = await model.run(HELLO)  # relaunches
        assert reply.choices[0].message.content
        assert model.pid != first


async def test_api_key_generated_required_and_never_logged(
    standin: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sglang_backend")
    model = AsyncSGLangModel(MODEL, server=standin())
    async with model:
        key = model.api_key
        assert key is not None
        assert len(key) >= 16
        async with httpx.AsyncClient() as client:
            url = f"{model.base_url}/v1/models"
            assert (await client.get(url)).status_code == 401
            ok = await client.get(url, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        await model.run(HELLO)
        assert key not in repr(model)
    assert caplog.records, "the server's log should be forwarded to logging"
    assert all(key not in r.getMessage() for r in caplog.records)


async def test_given_api_key_is_used(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, api_key="sk-test-given-key", server=standin()) as model:
        assert model.api_key == "sk-test-given-key"
        await model.run(HELLO)


async def test_cancel_during_start_kills_tree(standin: Standin, events_file: Path) -> None:
    model = AsyncSGLangModel(MODEL, server=standin(warmup_seconds=30))
    task = asyncio.ensure_future(model.start())
    deadline = time.monotonic() + 20
    while not read_events(events_file) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pids = {e["pid"] for e in read_events(events_file)}
    assert pids
    for pid in pids:
        assert not _alive(_tree(pid))
    await model.aclose()


async def test_connect_mode_never_launches(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, server=standin()) as owner:
        client = AsyncSGLangModel(MODEL, api_key=owner.api_key, url=owner.base_url)
        async with client:
            assert client.launched is False
            reply = await client.run(HELLO)
            assert reply.choices[0].message.content
            assert client.pid is None
        assert owner.state is ServerState.READY


def test_config_errors_are_typed() -> None:
    with pytest.raises(ConfigError, match="port"):
        ServerConfig(port=70000)
    with pytest.raises(ConfigError, match="startup_timeout"):
        ServerConfig(startup_timeout=-1)
    with pytest.raises(ConfigError, match="--api-key"):
        ServerConfig(extra_args=["--api-key", "x"])
    with pytest.raises(ConfigError, match="tp_size"):
        ServerConfig(extra_args=["--tp-size=2"])
    with pytest.raises(ConfigError):
        AsyncSGLangModel(MODEL, url="http://127.0.0.1:1", server=ServerConfig())
    with pytest.raises(ConfigError, match="timeout"):
        AsyncSGLangModel(MODEL, timeout=-5)


def test_sigkill_of_launcher_kills_server_tree(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    script = tmp_path / "launcher.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio
        from sglang_backend import AsyncSGLangModel, ServerConfig
        from sglang_backend.testing import standin_command

        async def main():
            config = ServerConfig(launch_command=standin_command(),
                                  extra_args=["--standin-events-file", {str(events)!r}])
            model = AsyncSGLangModel("m", server=config)
            await model.start()
            print(model.pid, flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
    """))
    launcher = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        pid = int(launcher.stdout.readline())
        tree = _tree(pid)
        assert len(tree) >= 3  # launcher + scheduler + detokenizer
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 2.0
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(tree), "server tree outlived its SIGKILLed launcher by 2 s"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
