"""SGLangModel: the blocking facade over :class:`~sglang_backend.AsyncSGLangModel`.

It owns an event loop in a worker thread for its whole life (``_facade_loop``), so the
watchdog keeps working while the caller is idle, and it works from threads that already run an
event loop (a Jupyter cell, an async framework calling sync code). A chat call on a ready
server does not visit that loop: the async model builds the request, the backend admits it
under its thread-safe lock, and the blocking SDK sends it from the caller's thread
(``_blocking``); the loop starts and relaunches the server and judges failures. The native
endpoints' twins are the base class in ``_sync_native``; the iterators are in ``_sync_streams``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

import openai
from openai.types.chat import ChatCompletion, ParsedChatCompletion

from . import _http
from ._blocking import BlockingRequestPath
from ._facade_loop import FacadeLoop, LoopThread
from ._lease import Lease
from ._sync_native import SyncNativeSurface
from ._sync_streams import SyncChatStream, SyncGenerateStream
from ._transport import LeasedSyncTransport
from .config import ServerConfig
from .model import AsyncSGLangModel, ChatRequest, ModelT
from .server import EventCallback, LaunchedServer, ServerState

__all__ = ["SGLangModel", "SyncChatStream", "SyncGenerateStream", "SyncTokenCounter"]

logger = logging.getLogger("sglang_backend")

P = ParamSpec("P")
T = TypeVar("T")


class SyncTokenCounter:
    """Blocking twin of :class:`~sglang_backend.SGLangTokenCounter`."""

    def __init__(self, portal: LoopThread, model: AsyncSGLangModel) -> None:
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


class SGLangModel(SyncNativeSurface):
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
        self._runtime = FacadeLoop(self._async)
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
