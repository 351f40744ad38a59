"""Shared fixtures: stand-in server configs and a leak check around every test."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sglang_backend import ServerConfig
from sglang_backend._reaper import reaper
from sglang_backend.testing import standin_command

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
_MARKERS = ("sglang_backend.testing", "sglang::", "sglang_router")


def _server_processes() -> dict[int, float]:
    found: dict[int, float] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if any(marker in cmdline for marker in _MARKERS) and proc.pid != reaper.watcher_pid:
            found[proc.pid] = proc.info["create_time"]
    return found


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail a test that leaves a server, stand-in, child or router process running."""
    before = _server_processes()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = {
            pid: ct for pid, ct in _server_processes().items() if before.get(pid) != ct
        }
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if leaked:
        names = []
        for pid in leaked:
            try:
                proc = psutil.Process(pid)
                names.append(f"{pid}: {' '.join(proc.cmdline())}")
                proc.kill()
            except psutil.Error:
                pass
        if names:
            pytest.fail("processes left behind:\n" + "\n".join(names))


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
