"""What :class:`~sglang_backend.server.LaunchedServer` supervises: one launched tree.

A launched server runs either one SGLang process tree
(:class:`~sglang_backend._process.ServerProcess`) or workers behind a router
(:class:`~sglang_backend.router.RouterGroup`). Both implement :class:`SupervisedTree`, and the
supervisor uses nothing else of them while they serve: whether the tree lives (``exited``), what
to report when it dies (``masked_command``, ``log_tail``), how to stop it, and where requests
that routers do not route go.

Launching and readiness are each kind's own (a process is spawned, then waited for; a group
launches its workers before its router), so they are not part of the interface.
"""

from __future__ import annotations

import abc
import asyncio

__all__ = ["LOG_TAIL_LINES", "SupervisedTree"]

LOG_TAIL_LINES = 20
"""How many of the last log lines an error message carries."""


class SupervisedTree(abc.ABC):
    """A launched tree of processes, supervised as one unit from launch to stop."""

    @property
    @abc.abstractmethod
    def pid(self) -> int:
        """The process one would look for: the server, or the group's router."""

    @property
    @abc.abstractmethod
    def returncode(self) -> int | None:
        """The return code of the tree's lifeline once it exited, else None."""

    @property
    @abc.abstractmethod
    def exited(self) -> asyncio.Future[int]:
        """Done, with the return code, when the tree's lifeline exits.

        Wait for it with ``asyncio.wait({tree.exited})``: cancelling a waiter that awaits it
        directly would cancel it for everyone.
        """

    @property
    @abc.abstractmethod
    def masked_command(self) -> list[str]:
        """The lifeline's argv with the API key masked (for errors and logs)."""

    @abc.abstractmethod
    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last lines of the lifeline's log, key masked."""

    @abc.abstractmethod
    async def wait_output_closed(self, timeout: float = 0.5) -> None:
        """Give the log readers a moment to take the last lines after an exit."""

    @abc.abstractmethod
    async def terminate(self, grace: float) -> int:
        """SIGTERM, up to ``grace`` seconds, then SIGKILL whatever is left; the return code.

        Never leaves a process of the tree behind.
        """

    async def kill(self) -> int:
        """Stop at once (no grace)."""
        return await self.terminate(0)

    def direct_urls(self) -> list[str]:
        """The base URLs that serve what routers do not route (token counting,
        ``/abort_request``); empty: the supervised server's own URL serves everything."""
        return []

    def worker_api_key(self, url: str) -> str | None:
        """The key of the server at ``url`` (one of :meth:`direct_urls`); None: the
        supervised server's own key."""
        return None
