"""The inactivity watchdog: an asyncio task that stops an idle server.

It reads a monotonic last-activity time; the owner keeps the in-flight count. When the
server has been idle for ``timeout`` seconds it calls ``on_idle`` *synchronously*, and
``on_idle`` re-checks the in-flight count and changes state in the same loop step — that is
what makes going idle and admitting a request mutually exclusive.

Requests that reach the server without the library (other clients of its URL) are activity
too when the owner asks for it (``ServerConfig.keep_alive_on_traffic``): the watchdog then
also polls SGLang's ``/metrics`` request counters (:class:`DirectTraffic`) and touches itself
while they move. The watchdog is the one owner of that policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from . import _http

__all__ = ["DirectTraffic", "InactivityWatchdog", "read_request_counters"]

logger = logging.getLogger(__name__)

_REQUESTS_TOTAL = "sglang:num_requests_total"  # counter: requests finished so far
_RUNNING = "sglang:num_running_reqs"  # gauge: requests being served now


def read_request_counters(text: str) -> tuple[float, float] | None:
    """(requests served so far, requests running now) from a Prometheus text page, summed
    over every label set (one per model name, scheduler or rank); None if neither is there."""
    found = False
    total = running = 0.0
    for line in text.splitlines():
        if not line.startswith(("sglang:num_requests_total", "sglang:num_running_reqs")):
            continue
        brace = line.find("{")
        name = line[:brace] if brace >= 0 else line.split(None, 1)[0]
        rest = line[line.rfind("}") + 1:] if brace >= 0 else line[len(name):]
        fields = rest.split()
        if name not in (_REQUESTS_TOTAL, _RUNNING) or not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        found = True
        if name == _REQUESTS_TOTAL:
            total += value
        else:
            running += value
    return (total, running) if found else None


class DirectTraffic:
    """Whether a server served requests since the last look, from its ``/metrics`` counters.

    ``urls`` names the servers to read when asked (a router group's workers change); each
    needs ``--enable-metrics``. A server whose page is missing or unreadable counts as quiet.
    """

    def __init__(self, urls: Callable[[], Sequence[str]]) -> None:
        self._urls = urls
        self._totals: dict[str, float] = {}

    def reset(self) -> None:
        """Forget the counters seen (a new server process counts from zero)."""
        self._totals.clear()

    async def seen(self, client: _http.httpx.AsyncClient) -> bool:
        """True when a request is running now or any finished since the previous call."""
        busy = False
        for url in self._urls():
            try:
                response = await client.get(f"{url.rstrip('/')}/metrics", timeout=5.0)
            except _http.httpx.HTTPError:
                continue
            counters = read_request_counters(response.text) if response.status_code == 200 else None
            if counters is None:
                continue
            total, running = counters
            last = self._totals.get(url)
            self._totals[url] = total
            busy = busy or running > 0 or (last is not None and total != last)
        return busy


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
        traffic: DirectTraffic | None = None,
    ) -> None:
        self.timeout = timeout
        self._on_idle = on_idle
        # The warm sleep: an earlier idle step that keeps the process (see ServerConfig).
        self.sleep_after = sleep_after if on_sleep is not None else None
        self._on_sleep = on_sleep
        self._slept = False
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        # Requests that bypass the library, polled while watching (keep_alive_on_traffic).
        self._traffic = traffic
        self._traffic_task: asyncio.Task[None] | None = None

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
            if self._traffic is not None and self._traffic_task is None:
                self._traffic.reset()
                self._traffic_task = asyncio.ensure_future(self._watch_traffic(self._traffic))

    def stop(self) -> None:
        """Stop watching."""
        for task in (self._task, self._traffic_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._task = self._traffic_task = None

    @property
    def _shortest(self) -> float:
        return min(t for t in (self.timeout, self.sleep_after) if t is not None)

    async def _watch_traffic(self, traffic: DirectTraffic) -> None:
        """Touch while the server's own counters show requests: a few looks per idle period,
        so traffic that keeps coming never lets the idle time reach the timeout."""
        period = min(1.0, max(self._shortest / 4, 0.05))
        async with _http.new_async_client() as client:
            while True:
                await asyncio.sleep(period)
                try:
                    busy = await traffic.seen(client)
                except Exception:  # a failed look is not activity, and never ends the watch
                    logger.debug("reading the server's /metrics failed", exc_info=True)
                    continue
                if busy:
                    self.touch()

    async def _run(self) -> None:
        shortest = self._shortest
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
