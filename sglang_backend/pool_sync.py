"""``SyncModelPool``: the blocking twin of :class:`~sglang_backend.pool.ModelPool` for scripts.

The very same pool runs on an event loop in one worker thread (anyio's blocking portal) for the
pool's whole life, so every server is launched from a thread that outlives it; each blocking
call is one hop onto that loop. ``on_event`` callbacks run on the loop thread.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar

import openai
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._transport import LeasedSyncTransport
from .errors import ModelClosedError
from .model import ChatStream, GenerateStream
from .pool import ModelPool, PoolModel
from .server import ServerState

__all__ = ["SyncModelPool", "SyncPoolModel"]

T = TypeVar("T")


class SyncModelPool:
    """A :class:`ModelPool` driven from blocking code: same arguments, same policy.

    ``with SyncModelPool(max_loaded=2) as pool: pool.add(...); pool.model("a").run(msgs)``
    """

    def __init__(self, max_loaded: int | None = None, **options: Any) -> None:
        self._pool = ModelPool(max_loaded, **options)
        self._lock = threading.Lock()
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._closed = False

    @property
    def pool(self) -> ModelPool:
        """The asynchronous pool underneath (use it only on the pool's own loop)."""
        return self._pool

    def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._closed:
                raise ModelClosedError("the pool is closed")
            if self._portal is None:
                self._portal_cm = start_blocking_portal()
                self._portal = self._portal_cm.__enter__()
            portal = self._portal
        return portal.call(functools.partial(func, *args, **kwargs))

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``func`` (a coroutine function or a plain one) on the pool's loop; its result."""
        return self._call(func, *args, **kwargs)

    def call_soon(self, func: Callable[[], object]) -> None:
        """Schedule ``func`` on the pool's loop without waiting (a no-op once closed)."""
        with self._lock:
            portal = self._portal
        if portal is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to release
                portal.start_task_soon(_run_plain, func)

    def add(self, name: str, model_path: str, **options: Any) -> SyncPoolModel:
        """:meth:`ModelPool.add` (no I/O); returns the blocking handle."""
        self._pool.add(name, model_path, **options)
        return self.model(name)

    def model(self, name: str) -> SyncPoolModel:
        return SyncPoolModel(self, self._pool.model(name))

    def loaded(self) -> list[str]:
        return self._pool.loaded()

    @property
    def names(self) -> list[str]:
        return self._pool.names

    def describe(self) -> list[dict[str, Any]]:
        return self._pool.describe()

    def start(self) -> None:
        """Load the pinned members."""
        self._call(self._pool.start)

    def close(self) -> None:
        """Stop every member, then the loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            portal, cm = self._portal, self._portal_cm
            self._portal = self._portal_cm = None
        if portal is None or cm is None:
            return
        try:
            portal.call(self._pool.aclose)
        finally:
            cm.__exit__(None, None, None)

    def __enter__(self) -> SyncModelPool:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sync{self._pool!r}"


class SyncPoolModel:
    """The blocking handle of one member: each call admitted (and loaded) by the pool."""

    def __init__(self, pool: SyncModelPool, handle: PoolModel) -> None:
        self._pool = pool
        self._handle = handle

    @property
    def name(self) -> str:
        return self._handle.name

    @property
    def request_model(self) -> str:
        return self._handle.request_model

    @property
    def state(self) -> ServerState:
        return self._handle.state

    @property
    def loaded(self) -> bool:
        return self._handle.loaded

    def __repr__(self) -> str:
        return f"Sync{self._handle!r}"

    def start(self) -> None:
        self._pool._call(self._handle.start)

    def stop(self) -> None:
        self._pool._call(self._handle.stop)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`PoolModel.run`; a stream comes back as a blocking iterator of chunks."""
        return self._blocking(self._pool._call(self._handle.run, *args, **kwargs))

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self._blocking(self._pool._call(self._handle.generate, *args, **kwargs))

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        result: list[int] = self._pool._call(self._handle.tokenize, text,
                                             add_special_tokens=add_special_tokens)
        return result

    def sleep(self) -> bool:
        """Put the member to the warm sleep now (see :meth:`AsyncSGLangModel.sleep`)."""
        result: bool = self._pool._call(self._handle.model.sleep)
        return result

    def http_client(self, **options: Any) -> Any:
        """A blocking ``httpx.Client`` (the SDK's stack) whose every request the pool admits:
        loaded (making room by policy) on the pool's loop, then sent from the caller's thread."""
        transport = LeasedSyncTransport(self._handle.model.request_path, self._pool,
                                        leases=self._handle.lease)
        return openai.DefaultHttpxClient(
            transport=transport, base_url=LeasedSyncTransport.BASE_URL.removesuffix("/v1"),
            trust_env=False, **options)

    def openai_client(self, **options: Any) -> openai.OpenAI:
        """A blocking ``openai.OpenAI`` whose every request the pool admits (``model=`` is
        yours to set: :attr:`request_model`)."""
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", self._handle.model.timeout)
        return openai.OpenAI(
            base_url=LeasedSyncTransport.BASE_URL, api_key=LeasedSyncTransport.PLACEHOLDER_KEY,
            http_client=self.http_client(), **options)

    def _blocking(self, result: Any) -> Any:
        if isinstance(result, (ChatStream, GenerateStream)):
            return _iterate(self._pool, result)
        return result


async def _run_plain(func: Callable[[], object]) -> None:
    func()


def _iterate(pool: SyncModelPool, stream: ChatStream | GenerateStream) -> Iterator[Any]:
    """Chunks of an async stream, each fetched on the pool's loop; closed when left."""
    try:
        while True:
            try:
                yield pool._call(stream.__anext__)
            except StopAsyncIteration:
                return
    finally:
        if not stream.closed:
            with contextlib.suppress(ModelClosedError):  # closing the pool closed it already
                pool._call(stream.aclose)
