"""HTTP transports whose every request is admitted through a model's lease.

They sit under the SDK clients :meth:`AsyncSGLangModel.openai_client` and
:meth:`SGLangModel.openai_client` hand out (and under the framework integrations): a request
waits out a launch or relaunch, goes to the server of the current run with its key, counts as
in flight until its response body is closed (a stream until the stream is), and a failure is
reported so a dead server is relaunched by the next request. Errors stay the HTTP stack's own
(the SDK then raises its own types): these clients are the SDK's, not the library's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar

from . import _http
from ._backend import log_failure
from ._lease import Lease, RequestPath

__all__ = ["LeaseFactory", "LeasedAsyncTransport", "LeasedSyncTransport", "LoopPortal",
           "ReleasingAsyncStream", "ReleasingSyncStream"]

httpx = _http.httpx
T = TypeVar("T")
_ATTEMPTS = 2

#: Where a transport gets each request's lease when the model's own admission is not enough
#: (a pool first loads the member and holds its slot): a fresh async context manager per
#: request, entered before the exchange and exited when the response body is closed.
LeaseFactory = Callable[[], contextlib.AbstractAsyncContextManager[Lease]]


async def _enter(path: RequestPath, leases: LeaseFactory | None) -> tuple[Lease, Callable[[], None]]:
    """One request's lease and its release (a plain call, made on the loop thread)."""
    if leases is None:
        lease = await path.admit()
        return lease, lease.release
    context = leases()
    lease = await context.__aenter__()

    def release() -> None:
        task = asyncio.ensure_future(context.__aexit__(None, None, None))
        task.add_done_callback(log_failure)

    return lease, release



def _retarget(request: Any, lease: Lease) -> None:
    """Send ``request`` to the leased server, whatever base URL its client was given."""
    root = httpx.URL(lease.base_url)
    request.url = request.url.copy_with(scheme=root.scheme, host=root.host, port=root.port)
    request.headers["Host"] = root.netloc.decode("ascii")
    request.headers.pop("Authorization", None)
    request.headers.update(_http.bearer_headers(lease.api_key))


class ReleasingAsyncStream(httpx.AsyncByteStream):
    """A response body that calls ``release`` once it is closed (a lease given back, a pool
    told a slot is free)."""

    def __init__(self, inner: Any, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()


class LeasedAsyncTransport(httpx.AsyncBaseTransport):
    """An async transport whose requests a model admits (see the module docstring)."""

    #: What the SDK client is built with; every request is retargeted to the real server.
    BASE_URL = "http://sglang-backend.invalid/v1"
    PLACEHOLDER_KEY = "sglang-backend-placeholder-key"

    def __init__(self, path: RequestPath, leases: LeaseFactory | None = None) -> None:
        self._path = path
        self._leases = leases

    async def handle_async_request(self, request: Any) -> Any:
        for attempt in range(_ATTEMPTS):
            lease, release = await _enter(self._path, self._leases)
            try:
                _retarget(request, lease)
                response = await lease.transport.handle_async_request(request)
            except BaseException as exc:
                release()
                if isinstance(exc, Exception):
                    # Marks a dead server; None: never reached a restarting server, resend.
                    verdict = await self._path.translate(lease, exc, retry=attempt == 0)
                    if verdict is None:
                        continue
                raise
            response.stream = ReleasingAsyncStream(response.stream, release)
            return response
        raise AssertionError("unreachable")  # pragma: no cover


class LoopPortal(Protocol):
    """What a blocking transport needs from the thread that runs the model's loop."""

    def call(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T: ...

    def call_soon(self, func: Callable[[], object]) -> None: ...


class ReleasingSyncStream(httpx.SyncByteStream):
    """The blocking twin of :class:`ReleasingAsyncStream`."""

    def __init__(self, inner: Any, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._release()


class LeasedSyncTransport(httpx.BaseTransport):
    """A blocking transport whose requests a model admits on its loop thread.

    Admission (and a relaunch) runs on the model's loop; the HTTP exchange itself runs in the
    caller's thread over the server run's blocking pool (``ServerPool.sync_transport``),
    which the run renews and closes.
    """

    BASE_URL = LeasedAsyncTransport.BASE_URL
    PLACEHOLDER_KEY = LeasedAsyncTransport.PLACEHOLDER_KEY

    def __init__(self, path: RequestPath, portal: LoopPortal,
                 leases: LeaseFactory | None = None) -> None:
        self._path = path
        self._portal = portal
        self._leases = leases

    def handle_request(self, request: Any) -> Any:
        for attempt in range(_ATTEMPTS):
            lease, release_now = self._portal.call(_enter, self._path, self._leases)
            release = _release_on_loop(self._portal, release_now)
            try:
                _retarget(request, lease)
                response = lease.pool.sync_transport().handle_request(request)
            except BaseException as exc:
                release()
                if isinstance(exc, Exception):
                    verdict = self._portal.call(self._path.translate, lease, exc, retry=attempt == 0)
                    if verdict is None:
                        continue
                raise
            response.stream = ReleasingSyncStream(response.stream, release)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Nothing to close: the connections belong to the server run's pool."""


def _release_on_loop(portal: LoopPortal, release_now: Callable[[], None]) -> Callable[[], None]:
    """Call ``release_now`` on the loop thread (the in-flight count lives there), once."""
    done = threading.Event()

    def release() -> None:
        if not done.is_set():
            done.set()
            portal.call_soon(release_now)

    return release
