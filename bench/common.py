"""Shared helpers: statistics, stand-in subprocesses, process-tree cleanup, machine facts.

Everything here is stdlib + psutil so the CAMEL reference script (another venv) can reuse the
small pieces it needs by copying nothing: it imports this module by path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
MODEL = "bench-model"

# A short chat request: what an agent step looks like on the wire, minus the long context.
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "Say hello to the benchmark."}]
MAX_TOKENS = 16


def summary(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """min / median / max / n of ``values`` (rounded); empty input gives ``n = 0``."""
    if not values:
        return {"min": None, "median": None, "max": None, "n": 0}
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """The stand-in's ``--standin-events-file`` lines (partial last line ignored)."""
    events = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as fh:
        for line in fh:
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def event_time(path: str | Path, kind: str) -> float | None:
    """``t`` (time.time()) of the first event ``kind``, or None."""
    for event in read_events(path):
        if event.get("event") == kind:
            return float(event["t"])
    return None


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group and every descendant; reap what is ours."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        tree = []
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(tree, timeout=5)


def alive(processes: Sequence[psutil.Process]) -> list[int]:
    """Pids among ``processes`` still running (zombies count as dead)."""
    out = []
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
    return out


class Standin:
    """A stand-in server run directly by the bench (not by the library), on a free port.

    Its output goes to a log file, so the bench process pays nothing for it. ``stop()`` (or
    leaving ``with``) kills the whole tree.
    """

    def __init__(self, extra_args: Sequence[str] = (), *, api_key: str | None = None,
                 python: str = sys.executable) -> None:
        self.port = free_port()
        self.api_key = api_key
        self.dir = Path(tempfile.mkdtemp(prefix="sglb-bench-"))
        self.events = self.dir / "events.jsonl"
        self.log = self.dir / "server.log"
        argv = [python, "-m", "sglang_backend.testing", "--model-path", MODEL,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--standin-events-file", str(self.events), *extra_args]
        if api_key:
            argv += ["--api-key", api_key]
        self._log_fh = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log_fh, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=ROOT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Block until the events file says ready; return its time. Raises if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = event_time(self.events, "ready")
            if t is not None:
                return t
            if self.proc.poll() is not None:
                raise RuntimeError(f"stand-in exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.01)
        raise TimeoutError("stand-in not ready in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            kill_tree(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log_fh.close()

    def __enter__(self) -> Standin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_standin(extra_args: Sequence[str] = (), **kwargs: Any) -> Iterator[Standin]:
    server = Standin(extra_args, **kwargs)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def run_json(argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
             cwd: Path = ROOT) -> dict[str, Any]:
    """Run a helper script that prints one JSON object as its last stdout line.

    The child gets its own session; whatever it leaves behind is killed.
    """
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=full_env, cwd=cwd,
                            start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        return {"error": f"timed out after {timeout:g} s", "stderr": err[-2000:]}
    finally:
        kill_tree(proc.pid)  # the group: anything the helper left behind
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit code {proc.returncode}", "stderr": err[-3000:],
                "stdout": out[-1000:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def leftover_children() -> list[dict[str, Any]]:
    """Descendants of this process still alive (then killed): should always be empty."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if "sglang_backend._reaper" in " ".join(proc.cmdline()):
                continue  # the library's orphan watcher: exits on its own when we exit
            found.append({"pid": proc.pid, "cmd": " ".join(proc.cmdline()[:6])})
            proc.kill()
    return found


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    freq = None
    with contextlib.suppress(Exception):
        f = psutil.cpu_freq()
        freq = round(f.max or f.current) if f else None
    cpu_model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_mhz": freq,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "shared_machine": True,
    }


def git_state() -> dict[str, Any]:
    """Commit of the checkout and whether the package's files differ from it (others may be
    editing the same work tree: the figures are for the code as it was on disk)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "package_modified": sorted(
                line.split(maxsplit=1)[1]
                for line in git("status", "--porcelain", "sglang_backend").splitlines())}


def versions() -> dict[str, Any]:
    import openai

    from sglang_backend import _http

    return {
        "python": platform.python_version(),
        "openai": openai.__version__,
        "http_stack": _http.stack_name,
        "http_stack_version": _version(_http.stack_name),
        "sglang_backend": _version("sglang-backend"),
        "anyio": _version("anyio"),
        "pydantic": _version("pydantic"),
        "uvicorn (stand-in)": _version("uvicorn"),
    }


class Heartbeat:
    """A task sleeping 1 ms in a loop; records how late each wake-up was."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (monotonic at wake, lateness s)
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            now = loop.time()
            self.samples.append((now, max(0.0, now - before - 0.001)))

    async def start(self) -> None:
        """Start beating; returns once the first sleep is pending (so a blocked loop counts)."""
        self.samples.clear()
        self._task = asyncio.ensure_future(self._beat())
        await asyncio.sleep(0)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def worst(self, origin: float, top: int = 3) -> list[dict[str, float]]:
        ranked = sorted(self.samples, key=lambda s: s[1], reverse=True)[:top]
        return [{"ms": round(late * 1e3, 2), "at_s": round(t - origin, 3)} for t, late in ranked]
