"""SGLangModel: the blocking facade over :class:`~sglang_backend.AsyncSGLangModel`.

It owns an event loop in a worker thread (anyio's blocking portal) for its whole life, so the
watchdog keeps working while the caller is idle, and it works from threads that already run an
event loop (a Jupyter cell, an async framework calling sync code). Every method delegates to
the async model; nothing here knows about servers or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from types import TracebackType
from typing import Any, Generic, Literal, ParamSpec, Protocol, TypeVar, cast, overload

import anyio
import openai
from anyio.from_thread import BlockingPortal
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ParsedChatCompletion

from . import _http
from ._blocking import BlockingRequestPath
from ._lease import Lease
from ._transport import LeasedSyncTransport
from .config import ServerConfig
from .errors import ModelClosedError
from .model import AsyncSGLangModel, ChatRequest, GenerateStream, ModelT
from .native import GenerateChunk, GenerateResult, LoRAUpdateResult, SamplingParams, UpdateWeightsResult
from .router import WorkerInfo
from .server import EventCallback, LaunchedServer, ServerState

__all__ = ["SGLangModel", "SyncChatStream", "SyncGenerateStream", "SyncTokenCounter"]

logger = logging.getLogger("sglang_backend")

_WAKE_INTERVAL = 0.2
_CANCEL_WAIT = 10.0
P = ParamSpec("P")
T = TypeVar("T")
ItemT = TypeVar("ItemT")
ItemT_co = TypeVar("ItemT_co", covariant=True)
StreamT = TypeVar("StreamT", bound="_SyncStream[Any]")


class _AsyncStream(Protocol[ItemT_co]):
    """What the blocking streams read: ChatStream, GenerateStream."""

    @property
    def closed(self) -> bool: ...
    def __aiter__(self) -> AsyncIterator[ItemT_co]: ...
    async def aclose(self) -> None: ...


class _Portal:
    """The loop thread. Started on first use, stopped by close() or the finalizer.

    The thread is a daemon running ``anyio.run`` with a :class:`BlockingPortal` in its main
    task (what ``start_blocking_portal`` does in recent anyio; older 4.x releases run it in an
    executor thread that interpreter shutdown joins *before* atexit finalizers could stop it,
    which hangs the exit). Calls are submitted with ``asyncio.run_coroutine_threadsafe`` on the
    portal's loop: ~30 µs a round trip here against ~160 µs for ``BlockingPortal.call``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._stopped = False
        self._forked_from: int | None = None

    def forget_after_fork(self, parent: int) -> None:
        """In a forked child: the loop thread did not come along; never wait for it."""
        self._lock = threading.Lock()  # may have been held by another thread at fork time
        self._forked_from = parent
        self._stopped = True
        self._portal = self._loop = self._thread = None
        self._thread_id = None

    def get(self) -> BlockingPortal:
        portal = self._portal
        if portal is not None:
            return portal
        with self._lock:
            if self._forked_from is not None:
                raise ModelClosedError(
                    f"this SGLangModel belongs to process {self._forked_from}, of which this "
                    "process is a fork; create a new model in the child"
                )
            if self._stopped:
                raise ModelClosedError("the model is closed")
            if self._portal is None:
                ready: Future[tuple[BlockingPortal, asyncio.AbstractEventLoop]] = Future()
                thread = threading.Thread(
                    target=_run_portal, args=(ready,), name="sglang-backend-loop", daemon=True
                )
                thread.start()
                self._portal, self._loop = ready.result()
                self._thread, self._thread_id = thread, thread.ident
            return self._portal

    @property
    def started(self) -> bool:
        return self._portal is not None

    def in_loop_thread(self) -> bool:
        return self._thread_id == threading.get_ident()

    def call(self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func`` on the loop and wait; Ctrl-C (or any interruption) cancels it there
        and waits for the cancellation to finish, so the model is consistent afterwards."""
        if self.in_loop_thread():
            # Waiting here would wait for this very thread: a hang, forever.
            raise RuntimeError(
                "a blocking SGLangModel method was called from the model's own event loop "
                "thread (an on_event callback?); hand the work to another thread, or use "
                "model.async_model there"
            )
        started = threading.Event()
        finished = threading.Event()

        async def runner() -> T:
            started.set()
            try:
                return await func(*args, **kwargs)
            finally:
                finished.set()

        self.get()
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(runner(), self._loop)
        try:
            while True:
                # A timed wait returns to Python code regularly, so Ctrl-C (and
                # _thread.interrupt_main) is raised promptly even without EINTR.
                try:
                    return future.result(timeout=_WAKE_INTERVAL)
                except FutureTimeoutError:
                    if future.done():
                        raise  # the call itself raised a TimeoutError
        except BaseException:
            if not future.done():
                future.cancel()
                if started.is_set():
                    finished.wait(_CANCEL_WAIT)
            raise

    def submit(self, func: Callable[[], Awaitable[T]]) -> Future[T]:
        """Start ``func`` on the loop without waiting for it."""
        self.get()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(_await(func), self._loop)

    def call_soon(self, func: Callable[[], object]) -> None:
        """Run the plain function ``func`` on the loop soon; do not wait (no-op once stopped)."""
        loop = self._loop
        if loop is None:
            return
        if self.in_loop_thread():
            func()
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(func)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            portal, thread, self._portal = self._portal, self._thread, None
        if portal is not None and thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop may already be gone
                portal.call(portal.stop, True)
            if thread is not threading.current_thread():
                thread.join()


async def _await(func: Callable[[], Awaitable[T]]) -> T:
    return await func()


def _run_portal(ready: Future[tuple[BlockingPortal, asyncio.AbstractEventLoop]]) -> None:
    async def main() -> None:
        async with BlockingPortal() as portal:
            ready.set_result((portal, asyncio.get_running_loop()))
            await portal.sleep_until_stopped()

    try:
        anyio.run(main)
    except BaseException as exc:
        if not ready.done():
            ready.set_exception(exc)
        else:
            raise


class _FacadeLoop:
    """What the finalizer needs (never the facade itself)."""

    def __init__(self, model: AsyncSGLangModel) -> None:
        self.model = model
        self.portal = _Portal()
        self.closed = False
        _RUNTIMES.add(self)

    def forget_after_fork(self, parent: int) -> None:
        # The child must neither stop the parent's server nor wait on a loop it lacks.
        self.closed = True
        self.portal.forget_after_fork(parent)

    def check_open(self) -> None:
        """Raise ModelClosedError (naming the parent process in a forked child) once closed."""
        if self.closed:
            self.portal.get()  # raises the fork-specific error in a forked child
            raise ModelClosedError("the model is closed")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.portal.started:
                self.portal.call(self.model.aclose)
        finally:
            self.portal.stop()

    def finalize(self) -> None:
        if self.closed:
            return
        if self.portal.started and self.model.state is not ServerState.CLOSED:
            warnings.warn(
                f"SGLangModel({self.model.model_type!r}) was never closed; use `with "
                "SGLangModel(...)` or call close()",
                ResourceWarning,
                stacklevel=2,
            )
        if self.portal.in_loop_thread():  # collected on the loop thread: cannot block here
            self.closed = True
            self.portal.get().start_task_soon(self.model.aclose)
            return
        self.close()


_RUNTIMES: weakref.WeakSet[_FacadeLoop] = weakref.WeakSet()
_PARENT_PID = os.getpid()


def _forget_runtimes_after_fork() -> None:
    global _PARENT_PID
    parent, _PARENT_PID = _PARENT_PID, os.getpid()
    for runtime in list(_RUNTIMES):
        runtime.forget_after_fork(parent)


def _remember_pid() -> None:
    global _PARENT_PID
    _PARENT_PID = os.getpid()


os.register_at_fork(before=_remember_pid, after_in_child=_forget_runtimes_after_fork)

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _SyncStream(Iterator[ItemT], Generic[ItemT]):
    """A plain iterator over an async stream of the model; breaking out of the loop closes it.

    A task on the model's loop reads the stream ahead into a thread-safe queue, so each chunk
    costs one queue hand-off instead of a loop round trip. Ctrl-C while waiting for a chunk
    closes the stream (the model stays usable).
    """

    def __init__(self, portal: _Portal, stream: _AsyncStream[ItemT]) -> None:
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
                    item = self._queue.get(timeout=_WAKE_INTERVAL)  # wakes for Ctrl-C
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


class SyncGenerateStream(_SyncStream[GenerateChunk]):
    """A plain iterator of :class:`~sglang_backend.native.GenerateChunk` (``/generate``
    streamed); closed early, the request is aborted on the server."""

    def __init__(self, portal: _Portal, stream: GenerateStream) -> None:
        super().__init__(portal, stream)
        self.rid = stream.rid
        self.rids = stream.rids


class SyncTokenCounter:
    """Blocking twin of :class:`~sglang_backend.SGLangTokenCounter`."""

    def __init__(self, portal: _Portal, model: AsyncSGLangModel) -> None:
        self._portal = portal
        self._model = model

    def count_tokens_from_messages(self, messages: Any) -> int:
        counter = self._model.token_counter
        result: int = self._portal.call(counter.count_tokens_from_messages, messages)
        return result

    def count_text(self, text: str) -> int:
        counter = self._model.token_counter
        result: int = self._portal.call(counter.count_text, text)
        return result


class SGLangModel:
    """Blocking SGLang chat model (CAMEL's ``SGLangModel`` API) over :class:`AsyncSGLangModel`.

    Same arguments as :class:`AsyncSGLangModel`. Use as ``with SGLangModel(...) as model:`` or
    call :meth:`close` / :meth:`cleanup` when done (a forgotten model is still stopped when
    garbage collected or at interpreter exit, with a ``ResourceWarning``). Thread-safe.
    """

    def __init__(
        self,
        model_type: Any,
        model_config_dict: Mapping[str, Any] | None = None,
        api_key: str | None = None,
        url: str | None = None,
        token_counter: Any = None,
        timeout: float | None = None,
        *,
        server: ServerConfig | None = None,
        on_event: EventCallback | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self._async = AsyncSGLangModel(
            model_type, model_config_dict, api_key, url, None, timeout,
            server=server, on_event=on_event, connect_timeout=connect_timeout,
        )
        self._user_counter = token_counter
        self._runtime = _FacadeLoop(self._async)
        self._finalizer = weakref.finalize(self, self._runtime.finalize)
        self._blocking = BlockingRequestPath(self._async.request_path, self._runtime.portal)
        self._sdk_cache: tuple[tuple[object, str, str | None], openai.OpenAI] | None = None

    # -- delegated state ------------------------------------------------------------------
    @property
    def async_model(self) -> AsyncSGLangModel:
        """The async model this facade drives."""
        return self._async

    @property
    def model_type(self) -> str:
        return self._async.model_type

    @property
    def model_config_dict(self) -> dict[str, Any]:
        return self._async.model_config_dict

    @property
    def stream(self) -> bool:
        return self._async.stream

    @property
    def state(self) -> ServerState:
        return self._async.state

    @property
    def pid(self) -> int | None:
        return self._async.pid

    @property
    def base_url(self) -> str | None:
        return self._async.base_url

    @property
    def api_key(self) -> str | None:
        return self._async.api_key

    @property
    def launched(self) -> bool:
        """True in launch mode, False when connected to an external server via ``url``."""
        return self._async.launched

    @property
    def server(self) -> LaunchedServer | None:
        """The launched-server supervisor (launch mode), for inspection."""
        return self._async.server

    @property
    def request_model(self) -> str:
        """The ``model`` value requests carry."""
        return self._async.request_model

    @property
    def timeout(self) -> float:
        """The per-request timeout in seconds."""
        return self._async.timeout

    @property
    def connect_timeout(self) -> float:
        """Seconds a connection to the server may take."""
        return self._async.connect_timeout

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or the model was finalized)."""
        return self._runtime.closed

    # -- the request path ------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self) -> Iterator[Lease]:
        """Admit one request for a ``with`` block (see :meth:`AsyncSGLangModel.lease`).

        The lease's ``base_url``, ``api_key`` and ``headers`` tell where to send; its ``http``
        is the async model's client, for coroutines run with :meth:`call_async`.
        """
        context = self._async.lease()
        portal = self._runtime.portal
        lease = portal.call(context.__aenter__)
        try:
            yield lease
        except BaseException as exc:
            portal.call(context.__aexit__, type(exc), exc, exc.__traceback__)
            raise
        portal.call(context.__aexit__, None, None, None)

    def openai_client(self, **options: Any) -> openai.OpenAI:
        """A blocking ``openai.OpenAI`` whose every request this model admits.

        The twin of :meth:`AsyncSGLangModel.openai_client`: admission (and a relaunch) runs
        on the model's loop, the HTTP exchange in the calling thread.
        """
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", self._async.timeout)
        return openai.OpenAI(
            base_url=LeasedSyncTransport.BASE_URL,
            api_key=LeasedSyncTransport.PLACEHOLDER_KEY,
            http_client=self.http_client(),
            **options,
        )

    def http_client(self) -> Any:
        """A blocking ``Client`` (the SDK's HTTP stack) whose every request this model admits."""
        self._runtime.check_open()
        transport = LeasedSyncTransport(self._async.request_path, self._runtime.portal)
        return openai.DefaultHttpxClient(
            transport=transport, base_url=LeasedSyncTransport.BASE_URL.removesuffix("/v1")
        )

    def call_async(self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the coroutine function ``func`` on the model's loop and wait for its result.

        For code that needs the async model's objects (they live on that loop). Ctrl-C
        cancels the call there and waits for its cleanup.
        """
        return self._runtime.portal.call(func, *args, **kwargs)

    def submit_async(self, func: Callable[[], Awaitable[T]]) -> Future[T]:
        """Start the coroutine function ``func`` on the model's loop; do not wait.

        ``asyncio.wrap_future(model.submit_async(f))`` awaits it from another event loop;
        cancelling the returned future cancels the task on the model's loop.
        """
        return self._runtime.portal.submit(func)

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Blocking :meth:`AsyncSGLangModel.tokenize`."""
        return self._runtime.portal.call(self._async.tokenize, text,
                                         add_special_tokens=add_special_tokens)

    def detokenize(self, tokens: list[int]) -> str:
        """Blocking :meth:`AsyncSGLangModel.detokenize`."""
        return self._runtime.portal.call(self._async.detokenize, tokens)

    def context_length(self) -> int:
        """Blocking :meth:`AsyncSGLangModel.context_length`."""
        return self._runtime.portal.call(self._async.context_length)

    # == SGLang's native endpoints (blocking twins; see AsyncSGLangModel) ==================
    @overload
    def generate(
        self,
        text: str | list[str] | None = None,
        *,
        input_ids: list[int] | list[list[int]] | None = None,
        sampling_params: SamplingParams | Mapping[str, Any] | None = None,
        return_logprob: bool = False,
        top_logprobs_num: int | None = None,
        logprob_start_len: int | None = None,
        lora_path: str | None = None,
        rid: str | list[str] | None = None,
        stream: Literal[False] = False,
    ) -> GenerateResult | list[GenerateResult]: ...
    @overload
    def generate(
        self,
        text: str | list[str] | None = None,
        *,
        input_ids: list[int] | list[list[int]] | None = None,
        sampling_params: SamplingParams | Mapping[str, Any] | None = None,
        return_logprob: bool = False,
        top_logprobs_num: int | None = None,
        logprob_start_len: int | None = None,
        lora_path: str | None = None,
        rid: str | list[str] | None = None,
        stream: Literal[True],
    ) -> SyncGenerateStream: ...
    def generate(
        self,
        text: str | list[str] | None = None,
        *,
        input_ids: list[int] | list[list[int]] | None = None,
        sampling_params: SamplingParams | Mapping[str, Any] | None = None,
        return_logprob: bool = False,
        top_logprobs_num: int | None = None,
        logprob_start_len: int | None = None,
        lora_path: str | None = None,
        rid: str | list[str] | None = None,
        stream: bool = False,
    ) -> GenerateResult | list[GenerateResult] | SyncGenerateStream:
        """Blocking :meth:`AsyncSGLangModel.generate` (a :class:`SyncGenerateStream` when
        streaming)."""
        # Both overloads at once: `stream` is only known at run time.
        generate = cast("Callable[..., Awaitable[GenerateResult | list[GenerateResult] | "
                        "GenerateStream]]", self._async.generate)
        result = self._runtime.portal.call(
            generate, text, input_ids=input_ids, sampling_params=sampling_params,
            return_logprob=return_logprob, top_logprobs_num=top_logprobs_num,
            logprob_start_len=logprob_start_len, lora_path=lora_path, rid=rid, stream=stream,
        )
        if isinstance(result, GenerateStream):
            return SyncGenerateStream(self._runtime.portal, result)
        return result

    def abort(self, rid: str) -> None:
        """Blocking :meth:`AsyncSGLangModel.abort`."""
        self._runtime.portal.call(self._async.abort, rid)

    def abort_all(self) -> None:
        """Blocking :meth:`AsyncSGLangModel.abort_all`."""
        self._runtime.portal.call(self._async.abort_all)

    def add_worker(self, url: str, api_key: str | None = None) -> str:
        """Blocking :meth:`AsyncSGLangModel.add_worker`."""
        return self._runtime.portal.call(self._async.add_worker, url, api_key)

    def remove_worker(self, worker_id: str) -> None:
        """Blocking :meth:`AsyncSGLangModel.remove_worker`."""
        self._runtime.portal.call(self._async.remove_worker, worker_id)

    def workers(self) -> list[WorkerInfo]:
        """Blocking :meth:`AsyncSGLangModel.workers`."""
        return self._runtime.portal.call(self._async.workers)

    @property
    def lora_adapters(self) -> dict[str, str]:
        """The adapters the model believes loaded (see :attr:`AsyncSGLangModel.lora_adapters`)."""
        return self._async.lora_adapters

    def load_lora_adapter(self, name: str, path: str, pinned: bool = False) -> LoRAUpdateResult:
        """Blocking :meth:`AsyncSGLangModel.load_lora_adapter`."""
        return self._runtime.portal.call(self._async.load_lora_adapter, name, path, pinned)

    def unload_lora_adapter(self, name: str) -> LoRAUpdateResult:
        """Blocking :meth:`AsyncSGLangModel.unload_lora_adapter`."""
        return self._runtime.portal.call(self._async.unload_lora_adapter, name)

    def update_weights_from_disk(self, model_path: str,
                                 load_format: str | None = None) -> UpdateWeightsResult:
        """Blocking :meth:`AsyncSGLangModel.update_weights_from_disk`."""
        return self._runtime.portal.call(self._async.update_weights_from_disk, model_path,
                                         load_format)

    def flush_cache(self) -> str:
        """Blocking :meth:`AsyncSGLangModel.flush_cache`."""
        return self._runtime.portal.call(self._async.flush_cache)

    def server_info(self) -> dict[str, Any]:
        """Blocking :meth:`AsyncSGLangModel.server_info`."""
        return self._runtime.portal.call(self._async.server_info)

    def model_info(self) -> dict[str, Any]:
        """Blocking :meth:`AsyncSGLangModel.model_info`."""
        return self._runtime.portal.call(self._async.model_info)

    def pause_generation(self, mode: Literal["abort", "retract", "in_place"] = "abort") -> None:
        """Blocking :meth:`AsyncSGLangModel.pause_generation`."""
        self._runtime.portal.call(self._async.pause_generation, mode)

    def continue_generation(self) -> None:
        """Blocking :meth:`AsyncSGLangModel.continue_generation`."""
        self._runtime.portal.call(self._async.continue_generation)

    def release_memory_occupation(self, tags: list[str] | None = None) -> None:
        """Blocking :meth:`AsyncSGLangModel.release_memory_occupation`."""
        self._runtime.portal.call(self._async.release_memory_occupation, tags)

    def resume_memory_occupation(self, tags: list[str] | None = None) -> None:
        """Blocking :meth:`AsyncSGLangModel.resume_memory_occupation`."""
        self._runtime.portal.call(self._async.resume_memory_occupation, tags)

    @property
    def token_counter(self) -> Any:
        """The user's counter if one was given, else a :class:`SyncTokenCounter`."""
        if self._user_counter is None:
            self._user_counter = SyncTokenCounter(self._runtime.portal, self._async)
        return self._user_counter

    def check_model_config(self) -> None:
        self._async.check_model_config()

    def __repr__(self) -> str:
        return f"SGLangModel({self._async.model_type!r}, state={self.state.value})"

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Launch (or check) the server and wait until it is ready."""
        self._runtime.portal.call(self._async.start)

    def is_ready(self) -> bool:
        return self._runtime.portal.call(self._async.is_ready)

    def touch(self) -> None:
        """Record activity the library cannot see (see :meth:`AsyncSGLangModel.touch`)."""
        self._async.touch()

    def stop(self) -> None:
        """Stop a launched server now; the next request relaunches it."""
        self._runtime.portal.call(self._async.stop)

    def sleep(self) -> bool:
        """:meth:`AsyncSGLangModel.sleep`: the warm sleep now; True once asleep."""
        result: bool = self._runtime.portal.call(self._async.sleep)
        return result

    def close(self) -> None:
        """Stop the server and the loop thread. Idempotent."""
        self._runtime.close()
        self._finalizer.detach()

    cleanup = close

    def __enter__(self) -> SGLangModel:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- chat -----------------------------------------------------------------------------
    @overload
    def run(
        self,
        messages: Any,
        response_format: type[ModelT],
        tools: Any = None,
        *,
        stream: Literal[False] | None = None,
    ) -> ParsedChatCompletion[ModelT]: ...
    @overload
    def run(
        self,
        messages: Any,
        response_format: Mapping[str, Any] | None = None,
        tools: Any = None,
        *,
        stream: Literal[False],
    ) -> ChatCompletion: ...
    @overload
    def run(
        self,
        messages: Any,
        response_format: Mapping[str, Any] | None = None,
        tools: Any = None,
        *,
        stream: Literal[True],
    ) -> SyncChatStream: ...
    @overload
    def run(
        self,
        messages: Any,
        response_format: Mapping[str, Any] | None = None,
        tools: Any = None,
        *,
        stream: bool | None = None,
    ) -> ChatCompletion | SyncChatStream: ...
    def run(
        self,
        messages: Any,
        response_format: Any = None,
        tools: Any = None,
        *,
        stream: bool | None = None,
    ) -> ChatCompletion | SyncChatStream:
        """Blocking :meth:`AsyncSGLangModel.run`; streams come back as a plain iterator.

        The request is the async model's own (:meth:`chat_request`), admitted under the same
        lease rules, sent from this thread on the server run's blocking pool, its errors
        translated by the same translation; the loop thread is visited only to (re)start the
        server or to judge a failure.
        """
        self._runtime.check_open()
        request = self._async.chat_request(messages, response_format, tools, stream=stream)
        path = self._blocking

        def send(lease: Lease) -> Any:
            return self._sdk(lease).chat.completions.create(**request.kwargs)

        if request.stream:
            sdk_stream, lease = path.open(send)
            return SyncChatStream(sdk_stream, lease, path,
                                  functools.partial(self._abort_later, lease, request.rid))
        return request.finish(path.call(send))

    def chat_request(
        self,
        messages: Any,
        response_format: Any = None,
        tools: Any = None,
        *,
        stream: bool | None = None,
    ) -> ChatRequest:
        """What :meth:`run` would send (:meth:`AsyncSGLangModel.chat_request`; no I/O)."""
        return self._async.chat_request(messages, response_format, tools, stream=stream)

    def _sdk(self, lease: Lease) -> openai.OpenAI:
        # One blocking SDK client per server run (its pool is the run's): re-pointed on the
        # first call of a run, then the hot path is one tuple comparison.
        cached = self._sdk_cache
        target = (lease.pool, lease.base_url, lease.api_key)
        if cached is not None and cached[0] == target:
            return cached[1]
        client = openai.OpenAI(
            base_url=f"{lease.base_url}/v1", api_key=lease.api_key or "EMPTY",
            http_client=lease.pool.sync_client(), max_retries=0,
            timeout=_http.httpx.Timeout(self._async.timeout, connect=self._async.connect_timeout),
        )
        self._sdk_cache = (target, client)
        return client

    def _abort_later(self, lease: Lease, rid: str) -> None:
        path = self._async.request_path
        self._runtime.portal.call_soon(functools.partial(path.abort_later, lease, rid))
