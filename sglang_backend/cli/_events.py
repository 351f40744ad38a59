"""What the commands that run a model share: the event fan-out and a streamed reply on stdout."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._report import say

if TYPE_CHECKING:
    from .._progress import StartupProgress
    from ..model import ChatStream
    from ..server import ServerEvent

__all__ = ["Events", "print_stream"]


class Events:
    """Fans ServerEvents out to the progress display and records the ones a command awaits."""

    def __init__(self, progress: StartupProgress) -> None:
        self.progress = progress
        self.seen: list[ServerEvent] = []
        self.changed = asyncio.Event()

    def __call__(self, event: ServerEvent) -> None:
        self.seen.append(event)
        self.progress(event)
        self.changed.set()

    async def wait_for(self, *kinds: str, timeout: float) -> ServerEvent | None:
        """Wait for the next event of one of ``kinds`` (None on timeout)."""
        start = len(self.seen)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in self.seen[start:]:
                if event.kind in kinds:
                    return event
            start = len(self.seen)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(
                    self.changed.wait(), None if remaining == float("inf") else remaining
                )
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return None


async def print_stream(stream: ChatStream) -> str:
    """Write a streamed reply to stdout as it arrives; return the text."""
    parts: list[str] = []
    async with stream:
        async for chunk in stream:
            for choice in chunk.choices:
                piece = choice.delta.content or ""
                if piece:
                    parts.append(piece)
                    say(piece, end="")
    say()
    return "".join(parts)
