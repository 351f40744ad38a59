"""Helpers shared by the reliability tests: process trees, waiting, error classification."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from sglang_backend import SGLangError

HELLO = [{"role": "user", "content": "Hello there"}]
LONG_PROMPT = [{"role": "user", "content": " ".join(["word"] * 60)}]


def tree(pid: int | None) -> list[psutil.Process]:
    """The process and its descendants (empty when gone)."""
    if pid is None:
        return []
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (zombies count as gone)."""
    running = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
        except psutil.NoSuchProcess:
            pass
    return running


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until every process is gone or ``timeout`` passes; return the survivors."""
    deadline = time.monotonic() + timeout
    left = alive(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = alive(procs)
    return left


async def until(predicate: Callable[[], bool], timeout: float = 30.0, step: float = 0.02) -> None:
    """Wait on the loop until ``predicate()`` holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)


def sync_until(predicate: Callable[[], bool], timeout: float = 30.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


def listening_addresses(pid: int) -> list[str]:
    """IP addresses of TCP sockets listening in ``pid``'s tree."""
    found = []
    for proc in tree(pid):
        try:
            conns = (getattr(proc, "net_connections", None) or proc.connections)(kind="tcp")
        except psutil.Error:
            continue
        found += [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN]
    return found


@dataclass
class Tally:
    """Outcome counts of many requests: successes, typed errors (by class), untyped ones."""

    ok: int = 0
    typed: Counter[str] = field(default_factory=Counter)
    untyped: list[BaseException] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def success(self) -> None:
        with self._lock:
            self.ok += 1

    def failure(self, exc: BaseException) -> None:
        with self._lock:
            if isinstance(exc, SGLangError):
                self.typed[type(exc).__name__] += 1
            else:
                self.untyped.append(exc)

    @property
    def total(self) -> int:
        return self.ok + sum(self.typed.values()) + len(self.untyped)

    def __str__(self) -> str:
        untyped = Counter(type(e).__name__ for e in self.untyped)
        return f"ok={self.ok} typed={dict(self.typed)} untyped={dict(untyped)}"


def resources() -> dict[str, int]:
    """Open fds, threads and live child processes of this (test) process."""
    me = psutil.Process()
    return {
        "fds": me.num_fds(),
        "threads": me.num_threads(),
        "children": len(alive(me.children(recursive=True))),
    }
