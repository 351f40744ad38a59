"""Fixtures that run the stand-in SGLang server as a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from sglang_backend._log_lines import READY_LINE
from sglang_backend.testing import standin_command

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def free_port() -> int:
    """A free loopback TCP port (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Standin:
    """One running stand-in server process and its artefacts."""

    proc: subprocess.Popen[bytes]
    port: int
    api_key: str | None
    events_path: Path
    stdout_path: Path
    stderr_path: Path
    tree: list[psutil.Process] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """Authorization header for the API key (if any)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def stderr(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        """Everything the server wrote to stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    def events(self) -> list[dict[str, object]]:
        """Parsed lines of the events file."""
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line]

    def wait_for_line(self, text: str, timeout: float = 15.0) -> None:
        """Wait until *text* appears on stderr (fail if the process exits first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"stand-in exited {self.proc.returncode}:\n{self.stderr()}")
            time.sleep(0.01)
        raise AssertionError(f"timeout waiting for {text!r}:\n{self.stderr()}")

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait for the ready line."""
        self.wait_for_line(READY_LINE, timeout)

    def children(self) -> list[psutil.Process]:
        """Current child processes of the launcher."""
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def remember_tree(self) -> None:
        """Record the current descendants so teardown can check they are gone."""
        for child in self.children():
            if child.pid not in {p.pid for p in self.tree}:
                self.tree.append(child)

    def kill_tree(self) -> None:
        """SIGKILL the launcher and every descendant, then reap."""
        self.remember_tree()
        for proc in self.tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        psutil.wait_procs(self.tree, timeout=5)


class StandinFactory:
    """Launches stand-ins and always tears them down."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Standin] = []

    def launch(
        self,
        *extra: str,
        api_key: str | None = "auto",
        port: int | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        model: str = MODEL,
    ) -> Standin:
        """Start a stand-in with *extra* flags; by default wait for the ready line."""
        key = secrets.token_hex(16) if api_key == "auto" else api_key
        port = port or free_port()
        index = len(self.started)
        events = self.tmp_path / f"events{index}.jsonl"
        out = self.tmp_path / f"stdout{index}.log"
        err = self.tmp_path / f"stderr{index}.log"
        argv = [*standin_command(), "--model-path", model, "--host", "127.0.0.1", "--port", str(port)]
        if key:
            argv += ["--api-key", key]
        argv += ["--standin-events-file", str(events), *extra]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=full_env, cwd=REPO_ROOT)
        server = Standin(proc, port, key, events, out, err)
        self.started.append(server)
        if wait:
            server.wait_ready()
            server.remember_tree()
        return server

    def close(self) -> None:
        """Kill every launched tree; assert nothing survived."""
        leftovers: list[psutil.Process] = []
        for server in self.started:
            server.kill_tree()
            leftovers += [p for p in server.tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not leftovers, f"leftover processes: {leftovers}"


@pytest.fixture
def standins(tmp_path: Path) -> Iterator[StandinFactory]:
    """A factory for stand-in servers, torn down after the test."""
    factory = StandinFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """One stand-in (API key, tool-call parser, metrics) shared by a test module."""
    factory = StandinFactory(tmp_path_factory.mktemp("shared"))
    try:
        yield factory.launch(
            "--tool-call-parser",
            "qwen25",
            "--enable-metrics",
            "--context-length",
            "4k",
            "--served-model-name",
            "standin-model",
            "--some-unknown-flag",
            "its-value",
        )
    finally:
        factory.close()


def send_signal(server: Standin, sig: signal.Signals) -> None:
    """Send *sig* to the launcher only."""
    os.kill(server.proc.pid, sig)


def python() -> str:
    """The interpreter running the tests."""
    return sys.executable
