"""Polling a server until it answers: one capped backoff for every wait on readiness.

A process's ``/health`` during its start, a remote server coming up, a router listing its
workers: each is a probe called until it says yes, with short sleeps that double up to a
ceiling (a fast server is seen at once, a slow one is not hammered).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from . import _http

__all__ = ["answers_health", "poll_until"]


async def poll_until(
    probe: Callable[[], Awaitable[bool]],
    *,
    first: float,
    cap: float,
    timeout: float | None = None,
) -> bool:
    """Call ``probe`` until it returns True (then True), or ``timeout`` seconds pass (then
    False; None: no bound). Between calls it sleeps ``first`` seconds, doubled after every
    miss up to ``cap``, and never past the timeout. What ``probe`` raises propagates."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = first
    while True:
        if await probe():
            return True
        pause = delay
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pause = min(delay, remaining)
        await asyncio.sleep(pause)
        delay = min(delay * 2, cap)


async def answers_health(client: _http.httpx.AsyncClient, url: str, *, timeout: float) -> bool:
    """``GET url`` answers 200 within ``timeout`` seconds (a transport failure: False)."""
    try:
        response = await client.get(url, timeout=timeout)
    except _http.httpx.TransportError:
        return False
    return response.status_code == 200
