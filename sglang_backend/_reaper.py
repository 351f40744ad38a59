"""Orphan-proofing: a tiny watcher process that kills server trees if their launcher dies.

``atexit`` and ``__del__`` do not run when the launching Python process is SIGKILLed, and
``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits (the sync facade
launches from a portal thread). So each launching process starts one watcher (lazily, the
first time it launches a server) and keeps the write end of a pipe to the watcher's stdin.
The launcher registers every server it spawns (pid + start time) and unregisters it after a
clean stop. When the pipe reaches EOF — the launcher exited or was killed, however — the
watcher SIGKILLs each registered server's process group and every descendant, then exits.

Written by hand: no library offers "kill this tree when that process dies" portably; the
kernel's pipe EOF is the one signal that survives SIGKILL of the launcher.

Run as ``python -m sglang_backend._reaper`` (by the library only).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading

import psutil

__all__ = ["reaper"]


class _Reaper:
    """The launcher side: starts the watcher once per process, sends watch/unwatch lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._watched: set[int] = set()
        os.register_at_fork(after_in_child=self._forget_after_fork)

    def _forget_after_fork(self) -> None:
        # A forked child must not hold the pipe open (the watcher would never see EOF)
        # and must not unregister its parent's servers.
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        self._proc = None
        self._watched = set()
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        """Start the watcher if needed. Blocking (fork/exec): call it from a worker thread."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "sglang_backend._reaper"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
            for pid in self._watched:
                self._send(f"W {pid}\n")

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            os.write(proc.stdin.fileno(), line.encode())
        except OSError:
            # The watcher died (someone killed it): forget it; the next launch starts another.
            self._proc = None

    def watch(self, pid: int) -> None:
        """Kill process group ``pid`` and its descendants if this process dies."""
        with self._lock:
            self._watched.add(pid)
            self._send(f"W {pid}\n")

    def unwatch(self, pid: int) -> None:
        """Forget ``pid`` (it was stopped cleanly)."""
        with self._lock:
            if pid in self._watched:
                self._watched.discard(pid)
                self._send(f"U {pid}\n")

    @property
    def watcher_pid(self) -> int | None:
        """The watcher's pid, if running (for tests)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None


reaper = _Reaper()


def _kill_tree(proc: psutil.Process | None, pid: int) -> None:
    descendants: list[psutil.Process] = []
    if proc is not None:
        with contextlib.suppress(psutil.Error):
            if proc.is_running():
                descendants = proc.children(recursive=True)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # psutil.Process remembers the start time, so a reused pid is never mistaken for ours.
    watched: dict[int, psutil.Process | None] = {}
    for raw in sys.stdin.buffer:
        parts = raw.split()
        if len(parts) != 2 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if parts[0] == b"W":
            try:
                watched[pid] = psutil.Process(pid)
            except psutil.Error:
                watched[pid] = None
        elif parts[0] == b"U":
            watched.pop(pid, None)
    for pid, proc in watched.items():
        _kill_tree(proc, pid)


if __name__ == "__main__":
    _main()
