"""Blocking iterators over the model's streams.

:class:`SyncChatStream` reads the blocking SDK's stream in the caller's thread (no loop hop
per chunk); :class:`ReadAheadStream` (``/generate`` streamed) reads an async stream ahead on
the model's loop into a thread-safe queue, one queue hand-off per chunk. Both close (and
abort on the server) when left early, and let Ctrl-C through while waiting.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import openai
from openai.types.chat import ChatCompletionChunk

from ._blocking import BlockingRequestPath
from ._facade_loop import WAKE_INTERVAL, LoopThread
from ._lease import Lease
from ._streams import GenerateStream
from .native import GenerateChunk

__all__ = ["ReadAheadStream", "SyncChatStream", "SyncGenerateStream"]

logger = logging.getLogger("sglang_backend")

ItemT = TypeVar("ItemT")
ItemT_co = TypeVar("ItemT_co", covariant=True)
StreamT = TypeVar("StreamT", bound="ReadAheadStream[Any]")


class _AsyncStream(Protocol[ItemT_co]):
    """What the blocking streams read: ChatStream, GenerateStream."""

    @property
    def closed(self) -> bool: ...
    def __aiter__(self) -> AsyncIterator[ItemT_co]: ...
    async def aclose(self) -> None: ...


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ReadAheadStream(Iterator[ItemT], Generic[ItemT]):
    """A plain iterator over an async stream of the model; breaking out of the loop closes it.

    A task on the model's loop reads the stream ahead into a thread-safe queue, so each chunk
    costs one queue hand-off instead of a loop round trip. Ctrl-C while waiting for a chunk
    closes the stream (the model stays usable).
    """

    def __init__(self, portal: LoopThread, stream: _AsyncStream[ItemT]) -> None:
        self._portal = portal
        self._stream = stream
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._finished = False
        self._reader = portal.submit(self._read_ahead)

    async def _read_ahead(self) -> None:
        put = self._queue.put
        try:
            async for chunk in self._stream:
                put(chunk)
        except asyncio.CancelledError:
            put(_END)
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the consumer thread, raised there
            put(_Failure(exc))
        else:
            put(_END)

    def __iter__(self: StreamT) -> StreamT:
        return self

    def __next__(self) -> ItemT:
        if self._finished:
            raise StopIteration
        try:
            while True:
                try:
                    item = self._queue.get(timeout=WAKE_INTERVAL)  # wakes for Ctrl-C
                    break
                except queue.Empty:
                    continue
        except BaseException:
            self.close()
            raise
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.exc
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop reading and close the HTTP stream (idempotent)."""
        self._finished = True
        self._reader.cancel()
        if not self._stream.closed:
            self._portal.call(self._stream.aclose)

    def __enter__(self: StreamT) -> StreamT:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped mid-way (a `break`): stop reading; the read-ahead task closes the stream.
        self._reader.cancel()


class SyncChatStream(Iterator[ChatCompletionChunk]):
    """A plain iterator of ``ChatCompletionChunk``; breaking out of the loop closes it.

    The blocking SDK stream is read in the caller's thread (no loop hop per chunk). It counts
    as in flight until exhausted or closed; closed early, the request is aborted on the
    server. Ctrl-C while waiting for a chunk closes it (the model stays usable).
    """

    def __init__(
        self,
        stream: openai.Stream[ChatCompletionChunk],
        lease: Lease,
        path: BlockingRequestPath,
        abort: Callable[[], None],
    ) -> None:
        self._stream = stream
        self._iterator = iter(stream)
        self._lease = lease
        self._path = path
        self._abort = abort
        self._finished = False  # the server ended it: nothing left to abort
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __iter__(self) -> SyncChatStream:
        return self

    def __next__(self) -> ChatCompletionChunk:
        if self._closed:
            raise StopIteration
        try:
            return next(self._iterator)
        except StopIteration:
            self._finished = True
            self.close()
            raise
        except BaseException as exc:
            self.close()
            error = self._path.translate(self._lease, exc)
            if error is None or error is exc:
                raise
            raise error from exc

    def close(self) -> None:
        """Close the HTTP stream and release the request (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stream.close()
        except Exception:  # closing a broken connection must not mask the real error
            logger.debug("error while closing a stream", exc_info=True)
        finally:
            self._lease.release()
            if not self._finished:
                self._abort()

    def __enter__(self) -> SyncChatStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped mid-way (a `break` without close()): give the slot back.
        if not self._closed:
            self.close()


class SyncGenerateStream(ReadAheadStream[GenerateChunk]):
    """A plain iterator of :class:`~sglang_backend.native.GenerateChunk` (``/generate``
    streamed); closed early, the request is aborted on the server."""

    def __init__(self, portal: LoopThread, stream: GenerateStream) -> None:
        super().__init__(portal, stream)
        self.rid = stream.rid
        self.rids = stream.rids
