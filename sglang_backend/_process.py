"""One launched process tree: spawn, log draining, readiness, bounded stop.

:class:`ServerProcess` is a single incarnation of a server (or router) process. It knows
nothing about idle stops or relaunches — :mod:`sglang_backend.server` owns that state
machine — but it guarantees the low-level rules:

* spawned with ``asyncio.create_subprocess_exec`` (argv, never a shell) in its own session,
  registered with the orphan reaper before anything else can happen;
* stdout and stderr drained continuously into ``logging`` and a bounded ring buffer (a full
  pipe never blocks the server), with the API key masked;
* readiness = the ready line in the log, or the health endpoint answering 200, whichever comes
  first, while the process is watched (an exit fails the wait at once);
* stop = SIGTERM to the group → grace → SIGKILL of the group and every descendant collected
  beforehand (children of a dead parent are re-parented, so they are collected first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psutil

from . import _http
from ._diagnose import start_error
from ._health import answers_health, poll_until
from ._log_lines import PHASES, READY_LINE
from ._reaper import reaper
from ._supervised import LOG_TAIL_LINES, SupervisedTree
from .errors import LaunchCommandNotFoundError, ServerStartTimeout

__all__ = ["Phase", "ServerProcess", "add_loopback_no_proxy", "collect_tree", "kill_tree"]

logger = logging.getLogger("sglang_backend.server")
T = TypeVar("T")

LAUNCHER_ENV = "SGLANG_BACKEND_LAUNCHER_PID"
_RING_SIZE = 200
_STREAM_LIMIT = 1 << 20  # SGLang's server_args line can be several KiB
_SPAWNED = object()  # the constructor's key: only ServerProcess.spawn holds it


@dataclass(frozen=True)
class Phase:
    """A startup phase seen in the server's log."""

    name: str
    line: str
    elapsed: float


def collect_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (blocking: run in a thread)."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def kill_tree(pgid: int, processes: Sequence[psutil.Process], timeout: float = 2.0) -> None:
    """SIGKILL a process group and each listed process still alive, and wait (up to
    ``timeout``) until they are gone (blocking: run in a thread). SIGKILL is delivered
    asynchronously: without the wait a stop could return while a child still runs."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + timeout
    pending = list(processes)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if _running(p)]
        if pending:
            time.sleep(0.005)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class ServerProcess(SupervisedTree):
    """A launched process tree. Built only by :meth:`spawn`; read-only from outside."""

    def __init__(
        self,
        key: object,
        proc: asyncio.subprocess.Process,
        command: list[str],
        masked_command: list[str],
        secret: str | None,
        on_phase: Callable[[Phase], None] | None,
    ) -> None:
        if key is not _SPAWNED:
            raise TypeError("a ServerProcess is built by `await ServerProcess.spawn(command)`")
        self._proc = proc
        self._command = command
        self._masked_command = masked_command
        self._secret = secret
        self._on_phase = on_phase
        self._ring: deque[str] = deque(maxlen=_RING_SIZE)
        self._ready_seen = asyncio.Event()
        self._started_at = time.monotonic()
        self._phase_index = 0
        self._exit: asyncio.Task[int] = asyncio.ensure_future(proc.wait())
        self._readers = [
            asyncio.ensure_future(self._drain(proc.stdout, logging.DEBUG)),
            asyncio.ensure_future(self._drain(proc.stderr, logging.INFO)),
        ]

    def __repr__(self) -> str:
        # Neither the raw command nor the secret: reprs end up in logs and reports.
        return (f"ServerProcess(pid={self.pid}, returncode={self.returncode}, "
                f"masked_command={self._masked_command!r})")

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def exited(self) -> asyncio.Task[int]:
        """A task that completes with the return code when the process exits."""
        return self._exit

    @property
    def command(self) -> list[str]:
        """The argv as launched (it may hold the key: never log it; see ``masked_command``)."""
        return list(self._command)

    @property
    def masked_command(self) -> list[str]:
        return list(self._masked_command)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        return list(self._ring)[-lines:]

    @classmethod
    async def spawn(
        cls,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        secret: str | None = None,
        on_phase: Callable[[Phase], None] | None = None,
        name: str = "server",
    ) -> ServerProcess:
        """Start ``command`` in a new session and begin draining its output."""
        command = list(command)
        masked = [mask(arg, secret) for arg in command]
        await _ensure_reaper()
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            full_env.update(env)
        add_loopback_no_proxy(full_env)
        # Marks the tree as ours (inherited by every descendant): tests and operators can
        # tell which Python process launched a server.
        full_env[LAUNCHER_ENV] = str(os.getpid())
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                env=full_env,
                limit=_STREAM_LIMIT,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise LaunchCommandNotFoundError(
                f"cannot run the {name} launch command {command[0]!r}: {exc.strerror}",
                command=masked,
            ) from None
        reaper.watch(proc.pid)
        process = cls(_SPAWNED, proc, command, masked, secret, on_phase)
        logger.info("launched %s pid %d: %s", name, proc.pid, " ".join(masked))
        return process

    async def _drain(self, stream: asyncio.StreamReader | None, level: int) -> None:
        if stream is None:
            return
        pid = self._proc.pid
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit: take what is buffered
                raw = await stream.read(_STREAM_LIMIT)
            if not raw:
                return
            line = mask(raw.decode("utf-8", "replace").rstrip(), self._secret)
            self._ring.append(line)
            logger.log(level, "[pid %d] %s", pid, line)
            if READY_LINE in line:
                self._ready_seen.set()
            if self._on_phase is not None:
                self._detect_phase(line, self._on_phase)

    def _detect_phase(self, line: str, on_phase: Callable[[Phase], None]) -> None:
        # Phases only move forward: a late line matching an earlier phase is not reported.
        for index, (pattern, phase) in enumerate(PHASES):
            if index >= self._phase_index and pattern.search(line):
                self._phase_index = index + 1 if index < len(PHASES) - 1 else index
                on_phase(Phase(phase, line, time.monotonic() - self._started_at))
                return

    async def wait_output_closed(self, timeout: float = 0.5) -> None:
        """Give the log readers a moment to take the last lines after an exit."""
        await asyncio.wait(self._readers, timeout=timeout)

    async def wait_ready(
        self,
        *,
        health_url: str,
        client: _http.httpx.AsyncClient,
        timeout: float,
        name: str = "server",
    ) -> None:
        """Return when ready; raise ServerStartError on exit, ServerStartTimeout on timeout.

        The ready line (SGLang logs it the moment its status turns Up) is the fast path; a
        ``health_url`` poll with a short capped backoff covers servers whose log level hides
        it. The process exit is watched in the same wait, so a crash is reported at once.
        """
        poll = asyncio.ensure_future(poll_until(
            lambda: answers_health(client, health_url, timeout=30.0), first=0.005, cap=0.2
        ))
        line = asyncio.ensure_future(self._ready_seen.wait())
        try:
            done, _ = await asyncio.wait(
                {poll, line, self._exit}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (poll, line):
                task.cancel()
            await asyncio.gather(poll, line, return_exceptions=True)
        if self._exit in done or self.returncode is not None:
            await self.wait_output_closed()
            code = self._exit.result()
            # The whole ring, not just the tail: SGLang prints more after the traceback.
            raise start_error(
                f"the {name} exited during start with {describe_returncode(code)}",
                output=self._ring,
                returncode=code,
                command=self.masked_command,
                log_tail=self.log_tail(),
            )
        if not done:
            raise ServerStartTimeout(
                f"the {name} was not ready within {timeout:g} s (startup_timeout); "
                "its process tree was killed",
                command=self.masked_command,
                log_tail=self.log_tail(),
            )

    async def terminate(self, grace: float) -> int:
        """SIGTERM the group, wait up to ``grace`` s, then SIGKILL whatever is left.

        Returns the return code. Never leaves a process of the tree behind.
        """
        pid = self._proc.pid
        tree: list[psutil.Process] = []
        if self.returncode is None:
            tree = await off_loop(collect_tree, pid)
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)
            if grace > 0:
                await asyncio.wait({self._exit}, timeout=grace)
        # SIGKILL the group and every collected descendant, even when the leader exited:
        # children re-parented to init would otherwise outlive it.
        if self.returncode is None:
            tree = tree + await off_loop(collect_tree, pid)
        await off_loop(kill_tree, pid, tree)
        code = await self._exit
        await self.wait_output_closed()
        reaper.unwatch(pid)
        return code


async def off_loop(func: Callable[..., T], *args: Any) -> T:
    """Run blocking ``func`` in a worker thread; inline once the interpreter is shutting down
    (then the default executor refuses new work, and blocking no longer matters)."""
    try:
        return await asyncio.to_thread(func, *args)
    except RuntimeError:
        return func(*args)


async def _ensure_reaper() -> None:
    if reaper.watcher_pid is None:
        await off_loop(reaper.ensure_started)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_loopback_no_proxy(env: dict[str, str]) -> None:
    """Append the loopback names to ``NO_PROXY`` and ``no_proxy`` in ``env`` (in place).

    SGLang's warm-up request goes to its own port through ``requests``, which honours
    ``HTTP_PROXY``: without this, a proxied environment hangs every real server at warm-up
    (SGLang issues #2468, #9814, #11949). Both spellings are set because tools disagree on
    which one wins.
    """
    entries: list[str] = []
    for key in ("NO_PROXY", "no_proxy"):
        for entry in env.get(key, "").split(","):
            if entry.strip() and entry.strip() not in entries:
                entries.append(entry.strip())
    entries += [host for host in LOOPBACK_HOSTS if host not in entries]
    env["NO_PROXY"] = env["no_proxy"] = ",".join(entries)


def mask(text: str, secret: str | None) -> str:
    """Replace ``secret`` in ``text`` (never log or show an API key)."""
    if secret:
        return text.replace(secret, "***")
    return text


def describe_returncode(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name} (return code {code})"
        except ValueError:
            return f"return code {code}"
    return f"exit code {code}"
