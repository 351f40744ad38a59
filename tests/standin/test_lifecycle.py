"""Stand-in lifecycle: phases, fault switches, signals, children."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import openai
import psutil
import pytest

from sglang_backend._http import httpx
from sglang_backend.testing import standin_command
from sglang_backend.testing._cli import parse_token_count
from tests.standin.conftest import READY_LINE, REPO_ROOT, Standin, StandinFactory, free_port

FAST_HEALTH = {"SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION": "0"}


def _sdk(server: Standin) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=server.api_key, max_retries=0)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_exit(server: Standin, timeout: float = 10.0) -> int:
    return server.proc.wait(timeout=timeout)


def test_standin_command_and_cli() -> None:
    assert standin_command() == [sys.executable, "-m", "sglang_backend.testing"]
    assert parse_token_count("32k") == 32000
    assert parse_token_count("32Ki") == 32768
    assert parse_token_count("4096") == 4096
    done = subprocess.run(
        [*standin_command(), "--port", "1"], cwd=REPO_ROOT, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert b"--model-path" in done.stderr


def test_package_import_is_cheap() -> None:
    code = "import sys, sglang_backend.testing; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, timeout=30, check=True
    )
    assert done.stdout.split() == [b"False", b"False"]


async def test_phases_health_and_events(standins: StandinFactory) -> None:
    server = standins.launch(
        "--standin-load-seconds", "0.6", "--standin-warmup-seconds", "1.0", env=FAST_HEALTH, wait=False
    )
    server.wait_for_line("Load weight begin")
    assert not _port_open(server.port)  # loading: port closed
    server.wait_for_line("Uvicorn running on")
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=5) as http:
        assert (await http.get("/health")).status_code == 503
        assert (await http.get("/health_generate")).status_code == 503
        assert (await http.get("/ready")).status_code == 503
        assert (await http.get("/v1/models")).status_code == 200
        server.wait_ready()
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/ping")).status_code == 200
    stderr = server.stderr()
    order = [
        "server_args=",
        "Load weight end",
        "KV Cache is allocated",
        "Capture cuda graph end",
        "max_total_num_tokens=",
        "Uvicorn running on",
        READY_LINE,
    ]
    positions = [stderr.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert f"'api_key': '{server.api_key}'" in stderr
    assert '"POST /generate HTTP/1.1" 200' in server.stdout()
    events = [e["event"] for e in server.events()]
    assert events == ["listening", "ready"]
    assert all(e["pid"] == server.proc.pid for e in server.events())


async def test_skip_warmup_fast_startup(standins: StandinFactory) -> None:
    started = time.monotonic()
    server = standins.launch("--skip-server-warmup", env=FAST_HEALTH)
    assert time.monotonic() - started < 3.0
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        assert (await http.get("/health")).status_code == 200
    assert "POST /generate" not in server.stdout()


def test_fail_at_load(standins: StandinFactory) -> None:
    server = standins.launch("--standin-fail-at-load", "CUDA out of memory (stand-in)", wait=False)
    assert _wait_exit(server) == 1
    stderr = server.stderr()
    assert "Scheduler hit an exception: Traceback" in stderr
    assert stderr.rstrip().endswith("CUDA out of memory (stand-in)")
    assert [e["event"] for e in server.events()] == ["fail"]
    assert READY_LINE not in stderr


def test_port_taken(standins: StandinFactory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        server = standins.launch(port=port, wait=False)
        assert _wait_exit(server) == 1
    assert (
        f"[Errno 98] error while attempting to bind on address ('127.0.0.1', {port}): "
        "address already in use" in server.stderr()
    )


async def test_sigterm_drains_in_flight(standins: StandinFactory) -> None:
    server = standins.launch("--standin-token-delay", "0.05", env=FAST_HEALTH)
    children = server.children()
    assert len(children) == 2
    async with _sdk(server) as client:
        slow = asyncio.ensure_future(
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=10
            )
        )
        await asyncio.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            assert (await http.get("/health")).status_code == 503
        reply = await slow
        assert reply.choices[0].finish_reason == "length"
    assert await asyncio.to_thread(_wait_exit, server) == 0
    assert "Draining requests and shutting down" in server.stderr()
    assert server.events()[-1]["event"] == "exit"
    psutil.wait_procs(children, timeout=3)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_sigterm_during_load_dies_at_once(standins: StandinFactory) -> None:
    server = standins.launch("--standin-load-seconds", "30", wait=False)
    server.wait_for_line("Load weight begin")
    time.sleep(0.3)
    server.remember_tree()
    server.proc.send_signal(signal.SIGTERM)
    assert _wait_exit(server, 5) == -signal.SIGTERM
    psutil.wait_procs(server.tree, timeout=3)
    assert not [c for c in server.tree if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_sigint_exits_as_interrupted(standins: StandinFactory) -> None:
    server = standins.launch("--skip-server-warmup")
    server.proc.send_signal(signal.SIGINT)
    assert _wait_exit(server, 5) in {-signal.SIGINT, 130}


async def test_ignore_sigterm(standins: StandinFactory) -> None:
    server = standins.launch("--standin-ignore-sigterm", env=FAST_HEALTH)
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for_line("SIGTERM received and ignored")
    await asyncio.sleep(0.3)
    assert server.proc.poll() is None
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        assert (await http.get("/health")).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
async def test_crash_after(standins: StandinFactory, stream: bool) -> None:
    server = standins.launch("--standin-crash-after", "2")
    children = server.children()
    async with _sdk(server) as client:
        for _ in range(2):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ok"}])
        if stream:
            received: list[Any] = []
            response = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "one two three four five"}], stream=True
            )

            async def consume() -> None:
                async for chunk in response:
                    received.append(chunk)

            with pytest.raises((openai.APIConnectionError, httpx.HTTPError)):
                await consume()
            assert len(received) >= 3  # role chunk + content chunks, then the connection drops
            assert all(c.choices[0].finish_reason is None for c in received)
        else:
            with pytest.raises(openai.APIConnectionError):
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert await asyncio.to_thread(_wait_exit, server) == -signal.SIGKILL
    assert "Received sigquit from a child process. It usually means one child failed." in server.stderr()
    assert "Scheduler hit an exception" in server.stderr()
    psutil.wait_procs(children, timeout=3)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert [e["event"] for e in server.events()].count("request") == 3


async def test_token_delay(standins: StandinFactory) -> None:
    server = standins.launch("--standin-token-delay", "0.05")
    async with _sdk(server) as client:
        started = time.monotonic()
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], max_tokens=10
        )
        assert time.monotonic() - started >= 0.5
        started = time.monotonic()
        stamps = []
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], max_tokens=6, stream=True
        )
        async for _chunk in stream:
            stamps.append(time.monotonic() - started)
        assert stamps[-1] >= 0.3
        assert stamps[1] < stamps[-1] - 0.15  # tokens arrive spread out
    requests = [e for e in server.events() if e["event"] == "request"]
    assert len(requests) == 2


def test_children_titles_and_death_with_parent(standins: StandinFactory) -> None:
    server = standins.launch("--tp-size", "2", "--skip-server-warmup")
    children = server.children()
    titles = sorted(" ".join(child.cmdline()).strip() for child in children)
    assert titles == ["sglang::detokenizer", "sglang::scheduler_TP0", "sglang::scheduler_TP1"]
    launcher = psutil.Process(server.proc.pid)
    assert all(child.ppid() == launcher.pid for child in children)
    assert all(child.gids() and child.pid != launcher.pid for child in children)
    server.proc.kill()
    server.proc.wait(5)
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert not [c for c in alive if c.status() != psutil.STATUS_ZOMBIE]


def test_startup_is_fast(standins: StandinFactory) -> None:
    started = time.monotonic()
    standins.launch(port=free_port())
    assert time.monotonic() - started < 5.0  # generous for a loaded CI box; ~0.7 s idle
