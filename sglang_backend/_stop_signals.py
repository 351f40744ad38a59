"""SIGINT and SIGTERM as a stop request for the long-running CLI commands (``serve``)."""

from __future__ import annotations

import asyncio
import signal

__all__ = ["StopSignals"]


class StopSignals:
    """While installed, SIGINT/SIGTERM set :attr:`stop` (and are named in :attr:`received`)
    instead of raising, so the command shuts its servers down in order."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.received: list[str] = []
        self._installed: list[signal.Signals] = []

    def _on_signal(self, signum: signal.Signals) -> None:
        self.received.append(signum.name)
        self.stop.set()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
            self._installed.append(signum)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)
        self._installed.clear()
