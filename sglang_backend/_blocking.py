"""The request path for blocking callers: the lease, without the thread hop.

The facade used to run every call on its loop thread and wait for it: one hand-off there and
one back, ~100-250 µs a call on these machines, and a loop thread that every request of a
thread pool queues behind. Here a request is admitted in the caller's own thread when the
server is ready (:meth:`RequestPath.try_admit`: one lock shared with the idle stop), sent on a
blocking pool that belongs to the server run (renewed and closed with it), and released in
the caller's thread. The loop is visited only when it must be: to start or relaunch the
server, and to judge a failure that needs the supervisor (a broken connection: crashed or
not? a timeout: hung?). Every other failure is translated by the same pure
:func:`~sglang_backend._translate.classify` as the async path's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ._lease import Lease, RequestPath
from ._translate import classify
from ._transport import LoopPortal
from .errors import RequestTimeoutError

__all__ = ["BlockingRequestPath"]

T = TypeVar("T")
_MAX_ATTEMPTS = 3


class BlockingRequestPath:
    """Admit, send, translate and release in the calling thread (see the module docstring)."""

    def __init__(self, path: RequestPath, portal: LoopPortal) -> None:
        self._path = path
        self._portal = portal

    def admit(self) -> Lease:
        """A lease: at once when the server is ready, else after a start on the loop."""
        lease = self._path.try_admit()
        if lease is None:
            lease = self._portal.call(self._path.admit)
        return lease

    def call(self, send: Callable[[Lease], T]) -> T:
        """Run ``send(lease)`` here under a lease released when it returns."""
        result, lease = self._send(send)
        lease.release()
        return result

    def open(self, send: Callable[[Lease], T]) -> tuple[T, Lease]:
        """Like :meth:`call`, but the lease stays held: the caller (a stream) releases it."""
        return self._send(send)

    def _send(self, send: Callable[[Lease], T]) -> tuple[T, Lease]:
        for attempt in range(_MAX_ATTEMPTS):
            lease = self.admit()
            try:
                return send(lease), lease
            except BaseException as exc:
                lease.release()
                error = self.translate(lease, exc, retry=attempt < _MAX_ATTEMPTS - 1)
                if error is exc:
                    raise
                if error is not None:
                    raise error from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def translate(self, lease: Lease, exc: BaseException, *, retry: bool = False) -> BaseException | None:
        """The error to raise for ``exc`` (None: send again), as the async path decides it."""
        if not isinstance(exc, Exception):
            return exc  # KeyboardInterrupt, SystemExit: the caller's, untouched
        failure = classify(exc, timeout=self._path.timeout)
        needs_supervisor = (
            failure.transport
            or failure.retry_after_recovery
            or isinstance(failure.error, RequestTimeoutError)
            or self._path.closed
        )
        if needs_supervisor:
            error: BaseException | None = self._portal.call(
                self._path.translate, lease, exc, retry=retry
            )
            return error
        return failure.error or exc
