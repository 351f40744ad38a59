"""Waiting for a server the test started itself (not through the library) to answer."""

from __future__ import annotations

import asyncio
import contextlib
import time

from sglang_backend._http import httpx


async def wait_healthy(url: str, timeout: float = 60.0) -> None:
    """Poll ``url/health`` until it answers 200 (no proxy: test addresses only)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url + "/health")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never became healthy")
