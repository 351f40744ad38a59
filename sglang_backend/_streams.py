"""Streams that hold a lease: chat chunks and ``/generate`` chunks, one lifecycle.

A stream counts as in flight (its lease is held, so the server is never idle-stopped under
it) until it is exhausted or closed. Closed before its end — ``aclose()``, leaving
``async with``, a cancelled consumer, or garbage collection of an abandoned stream — it is
aborted on the server by its request id. A failure mid-stream goes through the one error
translation (nothing is retried mid-stream). Only how an item is read and how the HTTP stream
is closed differ between the two kinds.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import warnings
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

import openai
import pydantic
from openai.types.chat import ChatCompletionChunk

from . import _http
from ._lease import Lease, RequestPath
from .errors import ModelClosedError, RequestError, SGLangError
from .native import GenerateChunk, stream_error

__all__ = ["ChatStream", "GenerateStream", "LeasedStream"]

logger = logging.getLogger("sglang_backend")
ItemT = TypeVar("ItemT")
StreamT = TypeVar("StreamT", bound="LeasedStream[Any]")
Rids = str | list[str] | None


class LeasedStream(abc.ABC, Generic[ItemT]):
    """An async iterator (and async context manager) that holds one lease until closed."""

    def __init__(self, path: RequestPath, registry: weakref.WeakSet[Any], lease: Lease,
                 rids: Rids) -> None:
        self._path = path
        self._registry = registry
        self._lease = lease
        self._rids = rids
        self._finished = False  # the server ended the stream: nothing left to abort
        self._closed = False
        self._loop = asyncio.get_running_loop()
        registry.add(self)

    @abc.abstractmethod
    async def _read(self) -> ItemT:
        """The next item; StopAsyncIteration at the end."""

    @abc.abstractmethod
    def _closer(self) -> Callable[[], Awaitable[object]]:
        """What closes the HTTP stream (kept apart from ``self`` for the finalizer)."""

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self: StreamT) -> StreamT:
        return self

    async def __anext__(self) -> ItemT:
        if self._closed:
            if self._path.closed:
                raise ModelClosedError("the model was closed while streaming")
            raise StopAsyncIteration
        try:
            return await self._read()
        except StopAsyncIteration:
            self._finished = True
            await self.aclose()
            raise
        except asyncio.CancelledError:
            await asyncio.shield(self.aclose())
            if self._path.closed:
                raise ModelClosedError("the model was closed while streaming") from None
            raise
        except Exception as exc:
            self._finished = True
            await self.aclose()
            if self._path.closed:
                raise ModelClosedError("the model was closed while streaming") from exc
            if isinstance(exc, SGLangError):  # already typed (an error event in the stream)
                raise
            error = await self._path.translate(self._lease, exc)
            if error is None or error is exc:
                raise
            raise error from exc

    async def aclose(self) -> None:
        """Close the HTTP stream and release the request (idempotent); a stream closed
        before its end is aborted on the server."""
        if self._closed:
            return
        self._closed = True
        self._registry.discard(self)
        self._lease.release()
        if self._rids is not None and not self._finished:
            self._path.abort_later(self._lease, self._rids)
        try:
            await self._closer()()
        except Exception:  # closing a broken connection must not mask the real error
            logger.debug("error while closing a stream", exc_info=True)

    def __del__(self) -> None:
        # Abandoned without aclose() (e.g. `break` out of `async for`): give the lease back,
        # or the server would count it in flight forever and never go idle.
        if self._closed:
            return
        self._closed = True
        name = type(self).__name__
        warnings.warn(f"{name} was not closed; use `async with` or `await stream.aclose()`",
                      ResourceWarning, stacklevel=1)
        rids = None if self._finished else self._rids
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(_abandon, self._lease, self._closer(), rids, self._path)

    async def __aenter__(self: StreamT) -> StreamT:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _abandon(lease: Lease, close: Callable[[], Awaitable[object]], rids: Rids,
             path: RequestPath) -> None:
    lease.release()
    if rids is not None:
        path.abort_later(lease, rids)
    task = asyncio.ensure_future(close())
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


class ChatStream(LeasedStream[ChatCompletionChunk]):
    """An async iterator of ``ChatCompletionChunk``; also an async context manager.

    It counts as in flight (the server will not be idle-stopped) until it is exhausted or
    closed. Close it early with ``await stream.aclose()`` or by leaving ``async with``;
    cancelling the consumer closes the HTTP stream too, and the request is aborted on the
    server.
    """

    def __init__(self, stream: openai.AsyncStream[ChatCompletionChunk], lease: Lease,
                 rid: str | None, *, path: RequestPath, registry: weakref.WeakSet[Any]) -> None:
        self._stream = stream
        self._iterator = stream.__aiter__()
        super().__init__(path, registry, lease, rid)

    async def _read(self) -> ChatCompletionChunk:
        return await self._iterator.__anext__()

    def _closer(self) -> Callable[[], Awaitable[object]]:
        return self._stream.close


class GenerateStream(LeasedStream[GenerateChunk]):
    """An async iterator of :class:`~sglang_backend.native.GenerateChunk` over a ``/generate``
    stream; also an async context manager. A streamed batch (or ``n > 1``) interleaves its
    outputs: ``chunk.index`` says which; ``chunk.delta`` is the new text of that output.

    It counts as in flight until it is exhausted or closed. Closed early (``aclose``, leaving
    ``async with``, cancelling the consumer), the library aborts the request on the server by
    its ``rid``. A ``data: {"error": ...}`` event becomes the library's typed error.
    """

    def __init__(self, response: _http.httpx.Response, lease: Lease, rids: list[str], *,
                 path: RequestPath, registry: weakref.WeakSet[Any]) -> None:
        self._response = response
        self._lines = response.aiter_lines()
        self.rids = rids
        self.rid = rids[0]
        self._texts: dict[int, str] = {}
        super().__init__(path, registry, lease, rids)

    def _closer(self) -> Callable[[], Awaitable[object]]:
        return self._response.aclose

    async def _read(self) -> GenerateChunk:
        while True:
            line = await self._lines.__anext__()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                raise StopAsyncIteration
            try:
                body = json.loads(data)
            except ValueError:
                raise RequestError(f"/generate streamed an undecodable event: {data[:200]}") \
                    from None
            if isinstance(body, dict) and "error" in body:
                raise stream_error(body)
            try:
                chunk = GenerateChunk.model_validate(body)
            except pydantic.ValidationError as exc:
                raise RequestError(f"/generate streamed an unexpected event: {data[:200]}",
                                   body=body) from exc
            text, before = chunk.text, self._texts.get(chunk.index, "")
            delta = text[len(before):] if text.startswith(before) else text
            self._texts[chunk.index] = text
            return chunk.model_copy(update={"delta": delta})
