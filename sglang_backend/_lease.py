"""The one request path: admission, the in-flight count, dead-server reports, release.

Every request the library sends — chat, streams, token counting, native endpoints, the
requests of the leased clients it hands out — runs under a :class:`Lease`:

1. **admit**: start or relaunch the server if needed and wait until it is ready;
2. **count** the request in flight, so the idle watchdog cannot stop the server under it
   (a stream keeps its lease until it is closed);
3. **report** a failure: a transport error is shown to the backend, which tells a dead
   server (the next request relaunches it) from a live one; every failure is translated by
   :func:`~sglang_backend._translate.classify`, the one error translation;
4. **release**, exactly once;
5. **abort** a cancelled request on the server: a request sent with a ``rid`` that is
   cancelled mid-way (or a stream closed early) is named in ``POST /abort_request`` to every
   server that may hold it, in the background — the cancelled caller never waits for it.

:class:`RequestPath` is the only code that calls a backend's ``acquire``/``recover``/
``release``. A new endpoint is a ``send(lease)`` coroutine and its response model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _http
from ._translate import check_response, classify
from .errors import ModelClosedError, RequestTimeoutError, ServerUnavailableError

if TYPE_CHECKING:
    from .server import Backend

__all__ = [
    "CLOSE_MESSAGE",
    "Lease",
    "LeaseContext",
    "RequestPath",
    "admin_key",
    "direct_headers",
    "direct_urls",
]

logger = logging.getLogger("sglang_backend")

T = TypeVar("T")
CLOSE_MESSAGE = "sglang_backend: model closed"
_MAX_ATTEMPTS = 3
_ABORT_TIMEOUT = 5.0


def admin_key(backend: Backend) -> str | None:
    """The ``--admin-api-key`` the server was launched with, if any."""
    return backend.admin_key


def direct_urls(backend: Backend) -> list[str]:
    """Where requests that routers do not route go: every worker of a router group, else the
    server itself (:meth:`Backend.direct_urls`)."""
    return backend.direct_urls()


def direct_headers(backend: Backend, url: str, *, admin: bool) -> dict[str, str]:
    """The ``Authorization`` header for a request sent straight to ``url`` (one of
    :func:`direct_urls`): the admin key on admin routes when one is set, else that worker's
    own key (a remote worker of a group may have its own), else the server's."""
    return _http.bearer_headers((backend.admin_key if admin else None) or backend.worker_api_key(url))


class Lease:
    """One admitted request: where to send it, and the promise to give the slot back.

    Attributes:
        base_url: the server's root URL (``http://127.0.0.1:PORT``).
        api_key: the key the server expects (never shown in ``repr``).
        http: the SDK-stack ``AsyncClient`` of this server run (keep-alive pool).
        transport: the transport under ``http``, for clients that bring their own.
    """

    __slots__ = ("_admin_key", "_backend", "_released", "_token", "api_key", "base_url", "http",
                 "pool", "transport")

    def __init__(self, backend: Backend, token: object) -> None:
        self._backend = backend
        self._token = token
        self._released = False
        self.base_url: str = backend.base_url
        self.api_key: str | None = backend.api_key
        pool = backend.pool
        self.pool: _http.ServerPool = pool  # this server run's connections
        self.http: _http.httpx.AsyncClient = pool.client
        self.transport: _http.httpx.AsyncHTTPTransport = pool.transport
        self._admin_key = admin_key(backend)

    @property
    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header this server needs (empty without a key)."""
        return _http.bearer_headers(self.api_key)

    @property
    def admin_headers(self) -> dict[str, str]:
        """The header admin endpoints need: the admin key when one is set, else the API key's.

        SGLang 0.5.23 guards its ``ADMIN_OPTIONAL`` routes (abort, LoRA, weights, memory,
        cache, pause) with ``--admin-api-key`` when it is set, and refuses the ordinary key
        there.
        """
        return _http.bearer_headers(self._admin_key or self.api_key)

    def direct(self) -> tuple[str, dict[str, str]]:
        """One server that runs what routers do not route (``/tokenize`` and the like), and
        the header it needs: the server itself, or a healthy worker behind a router."""
        url = self._backend.direct_urls()[0]
        return url, direct_headers(self._backend, url, admin=False)

    @property
    def direct_urls(self) -> list[str]:
        """The servers that run this lease's requests: every worker behind a router (routers
        do not forward ``/abort_request``), else the server itself."""
        return direct_urls(self._backend)

    def direct_headers(self, url: str, *, admin: bool) -> dict[str, str]:
        """The header for a request sent straight to ``url`` (see :func:`direct_headers`)."""
        return direct_headers(self._backend, url, admin=admin)

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Give the slot back (idempotent); the watchdog may now count the server idle."""
        if not self._released:
            self._released = True
            self._backend.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"Lease({self.base_url!r}, {state})"  # no key: reprs end up in logs


class RequestPath:
    """Admits requests to a model's server and translates their failures.

    Args:
        backend: returns the model's backend, creating it on first use.
        timeout: the per-request timeout (quoted in timeout errors).
        closed: tells whether the model was closed (cancellations then become
            :class:`ModelClosedError`).
    """

    def __init__(
        self,
        backend: Callable[[], Awaitable[Backend]],
        *,
        timeout: float,
        closed: Callable[[], bool],
        current: Callable[[], Backend | None] = lambda: None,
    ) -> None:
        self._backend = backend
        self._current = current
        self.timeout = timeout
        self._closed = closed
        self._tasks: set[asyncio.Task[Any]] = set()
        self._aborts: set[asyncio.Task[None]] = set()

    # -- the lease ------------------------------------------------------------------------
    def lease(self) -> LeaseContext:
        """``async with path.lease() as lease:`` — admit one request for the block."""
        return LeaseContext(self)

    def try_admit(self) -> Lease | None:
        """Admit one request now, from any thread, if the server is ready; else None.

        No start, no wait, no loop: the blocking facade's fast path. The slow path is
        :meth:`admit` on the model's loop.
        """
        backend = self._current()
        if backend is None or self._closed():
            return None
        admitted, token = backend.try_acquire()
        return Lease(backend, token) if admitted else None

    @property
    def closed(self) -> bool:
        """Whether the model behind this path was closed."""
        return self._closed()

    @property
    def calls_in_progress(self) -> int:
        """Calls of this path waiting for admission or running (what ``aclose()`` cancels)."""
        return len(self._tasks)

    async def admit(self) -> Lease:
        """Admit one request (starting the server if needed). The caller must release it."""
        task = asyncio.current_task()
        backend = await self._backend()
        try:
            token = await backend.acquire()
        except asyncio.CancelledError as exc:
            closed = self._closed_error(task, exc)
            if closed is not None:
                raise closed from None
            raise
        return Lease(backend, token)

    # -- sending --------------------------------------------------------------------------
    async def call(
        self, send: Callable[[Lease], Awaitable[T]], *, rid: str | Sequence[str] | None = None
    ) -> T:
        """Send under a lease released when ``send`` returns; retry what is safe to retry.

        ``rid``: the request id(s) ``send`` puts in the request; if the caller is cancelled
        while it runs, the server is told to abort them (see :meth:`abort_later`).
        """
        result, lease = await self._send(send, rid)
        lease.release()
        return result

    async def open(
        self, send: Callable[[Lease], Awaitable[T]], *, rid: str | Sequence[str] | None = None
    ) -> tuple[T, Lease]:
        """Like :meth:`call`, but the lease stays held: the caller (a stream) releases it."""
        return await self._send(send, rid)

    async def _send(
        self, send: Callable[[Lease], Awaitable[T]], rid: str | Sequence[str] | None
    ) -> tuple[T, Lease]:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            for attempt in range(_MAX_ATTEMPTS):
                lease = await self.admit()
                try:
                    return await send(lease), lease
                except BaseException as exc:
                    lease.release()
                    if rid is not None and isinstance(exc, asyncio.CancelledError):
                        self.abort_later(lease, rid)
                    error = await self.translate(lease, exc, retry=attempt < _MAX_ATTEMPTS - 1)
                    if error is not None:
                        raise error from exc
                    # Retrying: the lease was let go, so a stopped server can be relaunched.
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def translate(
        self, lease: Lease, exc: BaseException, *, retry: bool = False
    ) -> BaseException | None:
        """The error to raise for ``exc`` raised under ``lease`` (None: retry the request).

        Transport failures are reported to the backend, whose verdict names the typed error
        (:class:`~sglang_backend.errors.ServerCrashedError` when the server died with the
        request) or says whether the request may be sent again.
        """
        if isinstance(exc, asyncio.CancelledError):
            closed = self._closed_error(asyncio.current_task(), exc)
            return closed or exc
        failure = classify(exc, timeout=self.timeout)
        backend = lease._backend
        if failure.transport:
            if self._closed():
                return ModelClosedError("the model was closed during the request")
            verdict = await backend.recover(lease._token, exc, sent=failure.sent)
            if verdict.error is not None:  # the backend's verdict: crashed, closed
                return verdict.error
            if (verdict.resend or failure.retry_if_alive) and retry:
                return None  # not reached, or a kept-alive connection lost to a live server
            return ServerUnavailableError(
                f"could not reach the server at {lease.base_url}: "
                f"{type(exc.__cause__ or exc).__name__}"
            )
        if failure.retry_after_recovery and retry:
            return (await backend.recover(lease._token, exc, sent=False)).error  # None: retry
        if isinstance(failure.error, RequestTimeoutError):
            # Slow, or hung? A server that cannot even answer /health is declared hung.
            hung = await backend.check_hung(lease._token)
            if hung is not None:
                return hung
        return failure.error or exc

    # -- aborting ---------------------------------------------------------------------------
    def abort_later(self, lease: Lease, rid: str | Sequence[str]) -> None:
        """Post ``/abort_request`` for ``rid`` to every server of ``lease``, in the background.

        Returns at once: the task runs on the loop, errors are logged (debug), never raised.
        Nothing is sent once the model is closed (its server is being stopped anyway).
        """
        if self._closed():
            return
        rids = [rid] if isinstance(rid, str) else list(rid)
        if not rids:
            return
        task = asyncio.ensure_future(self._post_aborts(lease, rids))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def abort(self, lease: Lease, body: dict[str, Any]) -> None:
        """Post one ``/abort_request`` body to every server of ``lease`` (concurrently)."""
        responses = await asyncio.gather(
            *(lease.http.post(f"{url}/abort_request", json=body,
                              headers=lease.direct_headers(url, admin=True),
                              timeout=_ABORT_TIMEOUT) for url in lease.direct_urls),
            return_exceptions=True,
        )
        for response in responses:
            if isinstance(response, BaseException):
                raise response
            check_response(response)

    async def _post_aborts(self, lease: Lease, rids: list[str]) -> None:
        try:
            await asyncio.gather(*(self.abort(lease, {"rid": r}) for r in rids))
        except Exception:  # the caller is gone; an abort that fails changes nothing for it
            logger.debug("abort of %s failed", rids, exc_info=True)

    async def wait_aborts(self) -> None:
        """Wait for the background aborts sent so far (tests, orderly shutdown)."""
        if self._aborts:
            await asyncio.wait(set(self._aborts))

    # -- closing --------------------------------------------------------------------------
    def cancel_all(self) -> None:
        """Cancel every request waiting or running on this path (the model is closing)."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel(CLOSE_MESSAGE)

    def _closed_error(
        self, task: asyncio.Task[Any] | None, exc: asyncio.CancelledError
    ) -> ModelClosedError | None:
        if self._closed() and task is not None and CLOSE_MESSAGE in exc.args:
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
            return ModelClosedError("the model was closed during the request")
        return None


class LeaseContext:
    """The async context manager behind ``model.lease()``.

    Exceptions raised in the block are translated like the library's own requests' (a
    crashed server also marks the backend, so the next request relaunches it).
    """

    __slots__ = ("_lease", "_path", "_task")

    def __init__(self, path: RequestPath) -> None:
        self._path = path
        self._lease: Lease | None = None
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> Lease:
        self._task = asyncio.current_task()
        if self._task is not None:
            self._path._tasks.add(self._task)
        try:
            self._lease = await self._path.admit()
        except BaseException:
            self._forget()
            raise
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = self._lease
        assert lease is not None
        lease.release()
        self._forget()
        if exc is None:
            return
        error = await self._path.translate(lease, exc)
        if error is not None and error is not exc:
            raise error from exc

    def _forget(self) -> None:
        if self._task is not None:
            self._path._tasks.discard(self._task)
