"""Connect mode: :class:`RemoteServer`, a server (or router) someone else runs."""


from __future__ import annotations

import logging
import time

from . import _http
from ._backend import (
    Backend,
    EventCallback,
    Recovery,
    ServerState,
)
from ._health import poll_until
from ._translate import check_response
from .errors import (
    ModelClosedError,
    ServerHungError,
    ServerUnavailableError,
    SGLangError,
)

__all__ = ["RemoteServer"]

logger = logging.getLogger("sglang_backend.server")


class RemoteServer(Backend):
    """Connect mode: a server (or router) someone else runs. Never launched or stopped.

    ``connect_timeout`` bounds how long nothing may listen at the URL: a dead URL fails within
    it, while a server that answers but is still starting (``/health`` 503) is waited for up
    to ``startup_timeout``.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        startup_timeout: float,
        connect_timeout: float,
        health_check_timeout: float = 5.0,
        on_event: EventCallback | None = None,
    ) -> None:
        super().__init__(on_event)
        self.base_url = url
        self.api_key = api_key
        self._timeout = startup_timeout
        self._connect_timeout = connect_timeout
        self._health_check_timeout = health_check_timeout
        self._hung = False

    def _poolserver_url(self) -> str:
        return self.base_url

    def __repr__(self) -> str:
        return f"RemoteServer({self.base_url!r}, state={self.state.value})"

    def _auth(self) -> dict[str, str]:
        return _http.bearer_headers(self.api_key)

    async def acquire(self) -> object:
        if self.state is ServerState.CLOSED:
            raise ModelClosedError("the model is closed")
        if self._hung:
            # Declared hung by a timed-out request: fail fast until it answers again.
            if not await self._answers_health(self._health_check_timeout):
                raise ServerHungError(
                    f"the server at {self.base_url} still does not answer /health"
                )
            self._hung = False
        with self._admission:
            self.inflight += 1
        return None

    def try_acquire(self) -> tuple[bool, object]:
        if self.state is ServerState.CLOSED or self._hung:
            return False, None
        with self._admission:
            self.inflight += 1
        return True, None

    async def start(self) -> None:
        if self.state is ServerState.CLOSED:
            raise ModelClosedError("the model is closed")
        await self.wait_healthy(self._timeout)
        await self._check_key()
        self.state = ServerState.READY
        self.emit("ready")

    async def _check_key(self) -> None:
        """``/health`` needs no key: ask an authenticated endpoint, so a wrong key fails here."""
        response = await self.pool.client.get(f"{self.base_url}/v1/models", headers=self._auth(),
                                              timeout=self._connect_timeout + 30.0)
        if response.status_code in (401, 403):
            check_response(response)

    async def wait_healthy(self, timeout: float) -> None:
        refused_since: float | None = None
        last: str = "no answer"

        async def healthy() -> bool:
            nonlocal refused_since, last
            try:
                response = await self.pool.client.get(f"{self.base_url}/health", timeout=30.0)
                if response.status_code == 200:
                    return True
                last = f"/health answered {response.status_code}"
                refused_since = None  # something answers: it may be starting
            except _http.httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                refused_since = time.monotonic() if refused_since is None else refused_since
            if refused_since is not None and time.monotonic() - refused_since >= self._connect_timeout:
                raise ServerUnavailableError(
                    f"nothing answers at {self.base_url} (connect timeout "
                    f"{self._connect_timeout:g} s; {last})"
                )
            return False

        if not await poll_until(healthy, first=0.05, cap=1.0, timeout=timeout):
            raise ServerUnavailableError(
                f"the server at {self.base_url} was not healthy within {timeout:g} s ({last})"
            )

    async def recover(self, token: object, exc: BaseException, *, sent: bool) -> Recovery:
        if sent:
            return Recovery()
        # Not connected: the server may be restarting; wait on its health, then retry once.
        try:
            await self.wait_healthy(self._timeout)
        except SGLangError as unavailable:
            return Recovery(error=unavailable)
        return Recovery(resend=True)

    async def check_hung(self, token: object) -> ServerHungError | None:
        if await self._answers_health(self._health_check_timeout):
            return None
        self._hung = True
        self.emit("hung", health_check_timeout=self._health_check_timeout)
        return ServerHungError(
            f"the server at {self.base_url} stopped answering: a request timed out and /health "
            f"gave no 200 within {self._health_check_timeout:g} s"
        )

    async def aclose(self) -> None:
        self.state = ServerState.CLOSED
        await self._close_pool()
