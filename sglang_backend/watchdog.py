"""The inactivity watchdog: an asyncio task that stops an idle server.

It reads a monotonic last-activity time; the owner keeps the in-flight count. When the
server has been idle for ``timeout`` seconds it calls ``on_idle`` *synchronously*, and
``on_idle`` re-checks the in-flight count and changes state in the same loop step — that is
what makes going idle and admitting a request mutually exclusive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["InactivityWatchdog"]


class InactivityWatchdog:
    """Calls ``on_idle()`` after ``timeout`` s without :meth:`touch`; ``None`` disables it.

    ``on_idle`` returns True when it stopped the server (the watchdog then ends) and False
    when requests are still in flight (the watchdog looks again shortly).
    """

    def __init__(
        self,
        timeout: float | None,
        on_idle: Callable[[], bool],
        *,
        sleep_after: float | None = None,
        on_sleep: Callable[[], bool] | None = None,
    ) -> None:
        self.timeout = timeout
        self._on_idle = on_idle
        # The warm sleep: an earlier idle step that keeps the process (see ServerConfig).
        self.sleep_after = sleep_after if on_sleep is not None else None
        self._on_sleep = on_sleep
        self._slept = False
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def touch(self) -> None:
        """Record activity (a request admitted or finished); any thread."""
        self._last = time.monotonic()
        self._slept = False

    @property
    def idle_for(self) -> float:
        """Seconds since the last activity."""
        return time.monotonic() - self._last

    def start(self) -> None:
        """Begin watching (on the running loop)."""
        self.touch()
        if (self.timeout is not None or self.sleep_after is not None) and self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        """Stop watching."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _run(self) -> None:
        shortest = min(t for t in (self.timeout, self.sleep_after) if t is not None)
        recheck = max(shortest / 10, 0.05)
        while True:
            idle = self.idle_for
            waits: list[float] = []
            if self.sleep_after is not None and self._on_sleep is not None and not self._slept:
                if idle >= self.sleep_after:
                    # True: asleep (or nothing to do); False: busy, look again shortly.
                    self._slept = self._on_sleep()
                    waits.append(0.0 if self._slept else recheck)
                else:
                    waits.append(self.sleep_after - idle)
            if self.timeout is not None:
                remaining = self.timeout - idle
                if remaining <= 0:
                    if self._on_idle():
                        return
                    remaining = recheck  # requests in flight: their release will touch()
                waits.append(remaining)
            pending = [w for w in waits if w > 0]
            await asyncio.sleep(min(pending) if pending else recheck)
