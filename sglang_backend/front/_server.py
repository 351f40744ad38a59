"""``PoolFront``: the pool behind an OpenAI-compatible HTTP server (uvicorn), in-process."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import uvicorn

from ..errors import ConfigError, ServerError
from ..pool import ModelPool
from ._app import create_app

__all__ = ["PoolFront"]

class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the owner (the CLI, a test, an app) decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class PoolFront:
    """Serve ``pool`` on ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
    ``/v1/models`` and ``/generate``.

    Binds ``127.0.0.1`` on a free port by default and requires ``api_key`` (default: a random
    one, see :attr:`api_key`). ``async with PoolFront(pool) as front:`` starts the pool (its
    pinned members) and the HTTP server; leaving it stops the server, then every member.
    """

    def __init__(self, pool: ModelPool, *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, allow_no_key: bool = False) -> None:
        if api_key == "" and not allow_no_key:
            raise ConfigError("an empty api_key needs allow_no_key=True")
        self.pool = pool
        self.host = host
        self._port = port
        self._api_key = secrets.token_urlsafe(24) if api_key is None else api_key
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._clients: Any = None

    @property
    def api_key(self) -> str:
        """The key clients must send (``Authorization: Bearer``); empty: none checked."""
        return self._api_key

    @property
    def port(self) -> int:
        server = self._server
        if server is None or not server.servers:
            return self._port
        return int(server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (the OpenAI base URL is this plus ``/v1``)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def __repr__(self) -> str:
        return f"PoolFront(url={self.url!r}, models={self.pool.names!r})"

    async def __aenter__(self) -> PoolFront:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the pool, then listen; returns once the socket accepts connections."""
        await self.pool.start()
        app = create_app(self.pool, api_key=self._api_key or None)
        self._clients = app.state.clients
        config = uvicorn.Config(app, host=self.host, port=self._port, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=5)
        self._server = server = _Server(config)
        self._task = task = asyncio.ensure_future(server.serve())
        while not server.started:
            if task.done():
                error = task.exception() if not task.cancelled() else None
                raise ServerError(f"the front could not listen on {self.host}:{self._port}"
                                  + (f": {error}" if error else "")) from error
            await asyncio.sleep(0.01)

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (or the HTTP server ends)."""
        assert self._task is not None, "start() first"
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def aclose(self) -> None:
        """Stop listening, let open responses finish (5 s grace), stop every member."""
        server, task = self._server, self._task
        try:
            if server is not None and task is not None:
                server.should_exit = True
                await asyncio.gather(task, return_exceptions=True)
                await self._clients.aclose()
        finally:
            self._task = None
            await self.pool.aclose()
