"""Running requests by ``rid`` and their abort, as SGLang's TokenizerManager/scheduler do it.

SGLang's scheduler aborts every queued or running request whose rid *starts with* the
given rid (n>1 and batch items get derived rids), ignores an empty rid without
``abort_all``, and answers ``/abort_request`` 200 whether anything matched or not. A
request whose client disconnected is aborted the same way. An aborted request stops
generating and finishes with ``{"type": "abort", "message": "Aborted", ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sglang_backend.testing._events import EventLog

__all__ = ["ABORT_FINISH", "RequestRegistry", "RunningRequest", "new_rid"]

#: ``FINISH_ABORT().to_json()`` for a request aborted while running (0.5.23).
ABORT_FINISH: dict[str, Any] = {
    "type": "abort",
    "message": "Aborted",
    "status_code": None,
    "err_type": None,
}


_RECENT = 1024  # finished requests remembered for a late disconnect
DISCONNECT_ABORT_DELAY = 2.0  # seconds, SGLang's create_abort_task sleep


def new_rid() -> str:
    """A fresh request id as SGLang makes them (32 hex digits)."""
    return uuid.uuid4().hex


@dataclass
class RunningRequest:
    """One registered request."""

    rid: str
    kind: str
    abort_event: asyncio.Event = field(default_factory=asyncio.Event)
    cut: bool = False  # its client went away before the end (abort still pending)

    @property
    def aborted(self) -> bool:
        """Whether the request was aborted."""
        return self.abort_event.is_set()


class RequestRegistry:
    """Requests being served, by rid; ``abort`` ends them wherever they are."""

    def __init__(self, events: EventLog, on_request: Callable[[], bool] | None = None) -> None:
        self._events = events
        self._running: dict[str, RunningRequest] = {}
        self._recent: dict[str, RunningRequest] = {}
        # Whether a new registration writes its ``request`` line (False once crashing).
        self._on_request = on_request

    def __len__(self) -> int:
        return len(self._running)

    def start(self, rid: str, kind: str, *, log: bool = True) -> RunningRequest:
        """Register *rid* (``chat``, ``completion``, ``generate``, ``embedding``)."""
        running = RunningRequest(rid, kind)
        self._running[rid] = running
        if log and (self._on_request is None or self._on_request()):
            self._events.write("request", rid=rid, kind=kind)
        return running

    def finish(self, rid: str) -> None:
        """Forget *rid* (it finished, normally or not); remember it briefly for ``disconnected``."""
        running = self._running.pop(rid, None)
        if running is not None:
            self._recent[rid] = running
            while len(self._recent) > _RECENT:
                self._recent.pop(next(iter(self._recent)))

    def disconnected(self, rid: str, delay: float = DISCONNECT_ABORT_DELAY) -> None:
        """The client of *rid* went away before the end: abort it *delay* seconds later.

        SGLang's disconnect abort is late too (a background task sleeping 2 s for a stream,
        a 4 s ``is_disconnected`` poll otherwise), so a client's own ``/abort_request``,
        sent right after it closed the connection, is the one that counts. A cancelled
        stream is unwound from the inside, so the request may be unregistered already:
        it stays abortable (``cut``) until then.
        """
        running = self._running.get(rid) or self._recent.get(rid)
        if running is None or running.aborted or running.cut:
            return
        running.cut = True
        asyncio.get_running_loop().call_later(delay, self._abort_cut, running)

    def _abort_cut(self, running: RunningRequest) -> None:
        if not running.aborted:
            running.abort_event.set()
            self._events.write("abort", rid=running.rid, reason="disconnect")

    @contextlib.contextmanager
    def running(self, rid: str, kind: str, *, log: bool = True) -> Any:
        """``start`` … ``finish`` around a block."""
        handle = self.start(rid, kind, log=log)
        try:
            yield handle
        finally:
            self.finish(rid)

    def aborted(self, rid: str) -> bool:
        """Whether the request *rid* was aborted (False when unknown or finished)."""
        running = self._running.get(rid)
        return running is not None and running.aborted

    def abort(
        self, rid: str | None = None, *, abort_all: bool = False, reason: str = "abort_request"
    ) -> list[str]:
        """Abort *rid* (prefix match, as SGLang's scheduler) or everything; return the rids hit."""
        if not abort_all and not rid:
            return []
        cut = [r for r in self._recent.values() if r.cut]
        hit = [
            running
            for running in [*self._running.values(), *cut]
            if not running.aborted and (abort_all or (rid is not None and running.rid.startswith(rid)))
        ]
        # One ``abort`` line per request actually stopped: a finished or unknown rid leaves none.
        for running in hit:
            running.abort_event.set()
            self._events.write("abort", rid=running.rid, reason=reason)
        return [running.rid for running in hit]

    async def wait(self, rid: str, seconds: float) -> bool:
        """Sleep *seconds* unless *rid* is aborted first; return whether it was aborted."""
        running = self._running.get(rid)
        if running is None:
            if seconds > 0:
                await asyncio.sleep(seconds)
            return False
        if running.aborted:
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(running.abort_event.wait(), timeout=max(seconds, 0.0))
        return running.aborted
