"""Shared fixtures: stand-in server configs and a leak check around every test."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sglang_backend import ServerConfig
from sglang_backend._process import LAUNCHER_ENV
from sglang_backend._reaper import reaper
from sglang_backend.testing import standin_command

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def _ours(started: float) -> dict[int, str]:
    """Processes launched by this test process (or by a launcher of ours that has died)."""
    me = os.getpid()
    found: dict[int, str] = {}
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            marker = proc.environ().get(LAUNCHER_ENV)
        except psutil.Error:
            continue
        if marker is None or proc.pid == reaper.watcher_pid:
            continue
        launcher = int(marker)
        orphan = launcher != me and not psutil.pid_exists(launcher)
        if launcher == me or (orphan and proc.info["create_time"] >= started - 1):
            try:
                found[proc.pid] = " ".join(proc.cmdline())
            except psutil.Error:
                continue
    return found


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", action="store_true", default=False,
        help="run the long reliability soaks (tests/reliability; `nox -s soak`)",
    )


def _listening(pids: set[int]) -> list[str]:
    """TCP sockets in LISTEN state owned by any of ``pids``."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            # psutil < 6 (camel-ai's pin) names it connections()
            list_connections = getattr(proc, "net_connections", None) or proc.connections
            conns = list_connections(kind="tcp")
        except psutil.Error:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                found.append(f"pid {pid} listens on {conn.laddr.ip}:{conn.laddr.port}")
    return found


@pytest.fixture(autouse=True, scope="session")
def no_leaks_at_session_end() -> Iterator[None]:
    """Fail the run if, at the end of the session, a server process of ours is still running
    (SGLANG_BACKEND_LAUNCHER_PID naming this process, or a launcher of ours that died) or a
    TCP socket is listening in this process or in such a process.

    A PortReservation is bound but never listening, so an open model does not count; a
    leaked server does (uvicorn listens).
    """
    started = time.time()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = _ours(started)
        listening = _listening({os.getpid(), *leaked})
        if not (leaked or listening) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for pid in leaked:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    if leaked or listening:
        pytest.fail(
            "the test session left behind:\n"
            + "\n".join([*(f"process {p}: {c}" for p, c in leaked.items()), *listening]),
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail a test that leaves a server process (or any of its descendants) running.

    Launched trees carry SGLANG_BACKEND_LAUNCHER_PID in their environment, so processes of
    other test runs on the same machine are not mistaken for ours.
    """
    started = time.time()
    yield
    deadline = time.monotonic() + 5.0
    leaked = _ours(started)
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = _ours(started)
    for pid in leaked:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    if leaked:
        pytest.fail("processes left behind:\n" + "\n".join(f"{p}: {c}" for p, c in leaked.items()))


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def standin(events_file: Path) -> Callable[..., ServerConfig]:
    """Factory: a ServerConfig launching the stand-in, with fault switches as keywords.

    ``standin(crash_after=2, inactivity_timeout=1)`` → ``--standin-crash-after 2`` and
    ``ServerConfig(inactivity_timeout=1)``.
    """

    def make(*flags: str, **options: Any) -> ServerConfig:
        fields = set(ServerConfig.model_fields)
        config = {k: v for k, v in options.items() if k in fields}
        faults: list[str] = ["--standin-events-file", str(events_file)]
        for key, value in options.items():
            if key in fields:
                continue
            flag = "--standin-" + key.replace("_", "-")
            faults += [flag] if value is True else [flag, str(value)]
        extra = list(config.pop("extra_args", ()))
        config.setdefault("shutdown_timeout", 5.0)
        config.setdefault("startup_timeout", 60.0)
        return ServerConfig(
            launch_command=standin_command(), extra_args=[*faults, *flags, *extra], **config
        )

    return make
