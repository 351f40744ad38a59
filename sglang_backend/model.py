"""AsyncSGLangModel: OpenAI-compatible chat on a server this library launches or connects to.

This module holds the model's construction, its life (start, stop, sleep, close, fork) and its
chat (``run`` and the request it builds). SGLang's native endpoints are its base class
(:mod:`sglang_backend._native_surface`); the chat request and reply parsing are in
:mod:`sglang_backend._chat_request`. It is over 500 lines because ``run``'s typed overloads and
the constructor's checks are long, not because it mixes concerns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ParsedChatCompletion

from . import _http
from ._chat_request import ChatRequest
from ._lease import Lease, LeaseContext, RequestPath
from ._native_surface import NativeSurface
from ._requests import build_response_format, check_constraints, check_messages, check_tools
from ._streams import ChatStream, GenerateStream, LeasedStream
from ._translate import check_response
from ._transport import LeasedAsyncTransport
from ._warmup import warm_up_request_path
from .config import ServerConfig, SGLangConfig
from .errors import (
    ConfigError,
    InvalidRequestError,
    ModelClosedError,
    RequestError,
    ToolCallParserMissingError,
)
from .native import (
    check_adapter_name,
    new_rid,
)
from .server import (
    Backend,
    EventCallback,
    LaunchedServer,
    RemoteServer,
    ServerState,
)

__all__ = ["AsyncSGLangModel", "ChatRequest", "ChatStream", "GenerateStream", "SGLangTokenCounter"]

logger = logging.getLogger("sglang_backend")

DEFAULT_TIMEOUT = 180.0
DEFAULT_CONNECT_TIMEOUT = 5.0
ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)
_NO_KEY = "EMPTY"  # the SDK insists on a key; a server without --api-key ignores it


def _default_timeout(timeout: float | None) -> float:
    if timeout is not None:
        if isinstance(timeout, bool):
            raise ConfigError(f"timeout must be a number of seconds, got {timeout!r}")
        try:
            value = float(timeout)
        except (TypeError, ValueError):
            raise ConfigError(f"timeout must be a number of seconds, got {timeout!r}") from None
    else:
        raw = os.environ.get("MODEL_TIMEOUT")
        try:
            value = float(raw) if raw else DEFAULT_TIMEOUT
        except ValueError:
            raise ConfigError(f"MODEL_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return value


def _model_name(model_type: object) -> str:
    value = getattr(model_type, "value", model_type)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"model_type must be a non-empty model name or path, got {model_type!r}")
    return value


class SGLangTokenCounter:
    """Counts tokens with the served model's own tokenizer, through the server's ``/tokenize``.

    Chat messages are counted with the model's chat template, exactly as a request would be.
    If the server has no ``/tokenize`` (another OpenAI-compatible server), the count comes from
    the ``usage`` of a one-token completion. Nothing is downloaded.
    """

    def __init__(self, model: AsyncSGLangModel) -> None:
        self._model = model

    async def count_tokens_from_messages(self, messages: Any) -> int:
        """Prompt tokens of ``messages`` (OpenAI format) under the model's chat template."""
        checked = check_messages(messages)
        return await self._model._tokenize({"messages": list(checked)}, messages=checked)

    async def count_text(self, text: str) -> int:
        """Tokens of a plain string (no chat template)."""
        if not isinstance(text, str):
            raise InvalidRequestError(f"text must be a str, got {type(text).__name__}")
        return await self._model._tokenize({"prompt": text, "add_special_tokens": False})


class AsyncSGLangModel(NativeSurface):
    """An SGLang chat model for asyncio code, launching and supervising its server if needed.

    Args:
        model_type: the model path or Hugging Face id (``--model-path``); in connect mode, the
            model name sent in requests.
        model_config_dict: sampling options, validated by :class:`SGLangConfig`
            (``{"temperature": 0.2, "stream": True, "top_k": 20, ...}``).
        api_key: key for the server. Launch mode: passed with ``--api-key`` (default: a random
            key). Connect mode: sent as ``Authorization: Bearer``.
        url: connect to this running server (or sglang-router) instead of launching one.
        token_counter: a counter to use instead of the server's tokenizer.
        timeout: per-request timeout in seconds (default: env ``MODEL_TIMEOUT``, else 180).
        server: how to launch the server (launch mode only).
        on_event: called with every :class:`~sglang_backend.server.ServerEvent`.
        connect_timeout: seconds a connection may take (default 5): a dead ``url`` fails
            within it rather than after the whole request timeout.

    The constructor does no I/O. The server starts on ``async with``, :meth:`start`, or the
    first request; idle servers are stopped and relaunched on demand.
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
        self.model_type = _model_name(model_type)
        if server is not None and not isinstance(server, ServerConfig):
            raise ConfigError(
                f"server must be a ServerConfig (server=ServerConfig(...)), got {type(server).__name__}"
            )
        if on_event is not None and not callable(on_event):
            raise ConfigError(f"on_event must be callable, got {type(on_event).__name__}")
        self._config = SGLangConfig.from_dict(model_config_dict)
        self.model_config_dict: dict[str, Any] = dict(model_config_dict or {})
        self._kwargs, self._extra_body = self._config.request_kwargs()
        self._default_tools = check_tools(self._kwargs.pop("tools", None))
        build_response_format(self._kwargs.get("response_format"))  # checked now, not by a 400
        self._timeout = _default_timeout(timeout)
        self._connect_timeout = min(
            _default_timeout(connect_timeout if connect_timeout is not None
                             else DEFAULT_CONNECT_TIMEOUT), self._timeout)
        if url is not None and server is not None:
            raise ConfigError("pass either url= (connect to a running server) or server= "
                              "(launch one), not both")
        if url is not None and (not isinstance(url, str) or "://" not in url):
            raise ConfigError(f"url must be an http(s) URL like http://127.0.0.1:30000, got {url!r}")
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigError("api_key must be a string")
        if (
            url is None
            and server is not None
            and server.api_key is not None
            and api_key is not None
            and server.api_key.get_secret_value() != api_key
        ):
            raise ConfigError("api_key and server.api_key differ; set only one")
        self._url = url.rstrip("/").removesuffix("/v1") if url else None
        self._api_key = api_key
        self._server_config = server if url is None else None
        if self._server_config is None and url is None:
            self._server_config = ServerConfig()
        self._token_counter = token_counter
        self._on_event = on_event
        self._backend: Backend | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._client_target: tuple[object, str, str | None] | None = None
        self._prepare_task: asyncio.Task[None] | None = None
        self._closed = False
        self._path = RequestPath(self._get_backend, timeout=self._timeout,
                                 closed=lambda: self._closed or self._forked_from is not None,
                                 current=lambda: self._backend)
        self._streams: weakref.WeakSet[LeasedStream[Any]] = weakref.WeakSet()
        self._lora_loaded: dict[str, tuple[str, bool]] = {}
        self._lora_unloaded: set[str] = set()
        self._lora_hooked = False
        self._context_length: int | None = None
        self._forked_from: int | None = None
        _MODELS.add(self)
        self._request_model = (
            self._server_config.served_model_name
            if self._server_config is not None and self._server_config.served_model_name
            else self.model_type
        )

    # -- CAMEL-compatible surface ---------------------------------------------------------
    @property
    def stream(self) -> bool:
        """Whether :meth:`run` streams by default (``model_config_dict["stream"]``)."""
        return self._config.stream

    @property
    def token_counter(self) -> Any:
        """The user's counter if one was given, else a :class:`SGLangTokenCounter`."""
        if self._token_counter is None:
            self._token_counter = SGLangTokenCounter(self)
        return self._token_counter

    def check_model_config(self) -> None:
        """Re-validate ``model_config_dict`` (CAMEL API); raises ConfigError."""
        SGLangConfig.from_dict(self.model_config_dict)

    @property
    def request_model(self) -> str:
        """The ``model`` value requests carry (``served_model_name`` if set, else the path)."""
        return self._request_model

    @property
    def timeout(self) -> float:
        """The per-request timeout in seconds."""
        return self._timeout

    @property
    def connect_timeout(self) -> float:
        """Seconds a connection to the server may take (a dead URL fails within it)."""
        return self._connect_timeout

    def _request_timeout(self) -> _http.httpx.Timeout:
        return _http.httpx.Timeout(self._timeout, connect=self._connect_timeout)

    # -- the request path ----------------------------------------------------------------
    @property
    def request_path(self) -> RequestPath:
        """The model's admission and error translation (what leased transports build on)."""
        return self._path

    def lease(self) -> LeaseContext:
        """Admit one request for the duration of an ``async with`` block.

        ``async with model.lease() as lease:`` starts (or relaunches) the server and waits for
        it, counts the block as a request in flight (the idle watchdog waits for it), and
        yields where to send: ``lease.base_url``, ``lease.api_key``, ``lease.headers`` and
        ``lease.http`` (an ``AsyncClient`` on the server's connection pool). Exceptions raised
        in the block are translated like the library's own (a dead server becomes
        :class:`~sglang_backend.errors.ServerCrashedError` and is relaunched next time).
        """
        if self._closed:
            raise ModelClosedError("the model is closed")
        return self._path.lease()

    def openai_client(self, **options: Any) -> openai.AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` whose every request is admitted by this model.

        Use it for what the library does not wrap (completions, embeddings, models, any
        endpoint): each request waits out a launch or a relaunch, counts as in flight (a
        stream until it is closed), carries the key, and goes to the current server; the
        client never needs rebuilding. Errors are the SDK's own types. ``options`` are passed
        to ``AsyncOpenAI`` (``max_retries`` defaults to 0: admission already waits).
        """
        if self._closed:
            raise ModelClosedError("the model is closed")
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", self._request_timeout())
        return openai.AsyncOpenAI(
            base_url=LeasedAsyncTransport.BASE_URL,
            api_key=LeasedAsyncTransport.PLACEHOLDER_KEY,
            http_client=self.http_client(),
            **options,
        )

    def http_client(self) -> _http.httpx.AsyncClient:
        """An ``AsyncClient`` (the SDK's HTTP stack) whose every request this model admits.

        Any URL's scheme, host and port are replaced by the current server's, and the key
        is added: ``await client.post("/generate", json=...)`` works before the first start
        and across relaunches. Close it when done (the server's own pool is not affected).
        """
        if self._closed:
            raise ModelClosedError("the model is closed")
        client: _http.httpx.AsyncClient = openai.DefaultAsyncHttpxClient(
            transport=LeasedAsyncTransport(self._path),
            base_url=LeasedAsyncTransport.BASE_URL.removesuffix("/v1"),
        )
        return client

    # -- observable state --------------------------------------------------------------
    @property
    def state(self) -> ServerState:
        """The lifecycle state of the server."""
        if self._closed:
            return ServerState.CLOSED
        return self._backend.state if self._backend is not None else ServerState.CREATED

    @property
    def pid(self) -> int | None:
        """The server process id while it runs (launch mode), else None."""
        return self._backend.pid if self._backend is not None else None

    @property
    def base_url(self) -> str | None:
        """The server's root URL (``http://127.0.0.1:PORT``), once known."""
        if self._url is not None:
            return self._url
        return self._backend.base_url or None if self._backend is not None else None

    @property
    def api_key(self) -> str | None:
        """The key requests carry (generated at first launch if none was given)."""
        return self._backend.api_key if self._backend is not None else self._api_key

    @property
    def launched(self) -> bool:
        """True in launch mode, False when connected to an external server via ``url``."""
        return self._url is None

    @property
    def server(self) -> LaunchedServer | None:
        """The launched-server supervisor (launch mode), for inspection."""
        backend = self._backend
        return backend if isinstance(backend, LaunchedServer) else None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.model_type!r}, state={self.state.value}, "
                f"url={self.base_url!r})")

    # -- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> AsyncSGLangModel:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Launch the server and wait until it is ready (connect mode: wait until healthy)."""
        backend = await self._get_backend()
        await backend.start()

    async def is_ready(self) -> bool:
        """True when the server answers ``/health`` with 200 now (no launch, no wait)."""
        if self._closed or self._backend is None or not self.base_url:
            return False
        try:
            client = self._backend.pool.client
            response = await client.get(f"{self.base_url}/health", timeout=5.0)
        except (_http.httpx.TransportError, ModelClosedError):
            return False
        return response.status_code == 200

    def touch(self) -> None:
        """Record activity now, so the idle watchdog restarts its count.

        For traffic the library cannot see (other clients of a launched server, e.g. the CLI's
        ``serve``): call it whenever that traffic is observed.
        """
        server = self.server
        if server is not None:
            server.touch()

    async def stop(self) -> None:
        """Stop a launched server now; the next request relaunches it."""
        if isinstance(self._backend, LaunchedServer):
            await self._backend.stop()

    async def sleep(self) -> bool:
        """Put a launched server to the warm sleep now, as ``ServerConfig.sleep_timeout``
        would: its GPU memory released, the process kept; the next request wakes it.

        True once asleep; False when there is nothing to put to sleep (connect mode, not
        started, requests in flight) or SGLang refused (the server then stays awake).
        """
        if self._closed:
            raise ModelClosedError("the model is closed")
        if isinstance(self._backend, LaunchedServer):
            return await self._backend.sleep()
        return False

    async def aclose(self) -> None:
        """Stop the server (launch mode) and release every resource. Idempotent.

        Requests still in flight fail with :class:`ModelClosedError`.
        """
        if self._closed:
            return
        self._closed = True
        if self._forked_from is not None:
            return  # the server, its tasks and its loop belong to the parent process
        self._path.cancel_all()
        for stream in list(self._streams):
            await stream.aclose()
        if self._prepare_task is not None and not self._prepare_task.done():
            self._prepare_task.cancel()
            await asyncio.wait({self._prepare_task})
        if self._backend is not None:
            await self._backend.aclose()  # stops the server, closes its connection pool

    async def cleanup(self) -> None:
        """Alias of :meth:`aclose` (CAMEL's name)."""
        await self.aclose()

    async def _get_backend(self) -> Backend:
        if self._forked_from is not None:
            raise ModelClosedError(
                f"this model belongs to process {self._forked_from}, of which this process is "
                "a fork; create a new model in the child"
            )
        if self._closed:
            raise ModelClosedError("the model is closed")
        if self._backend is None:
            if self._prepare_task is None:
                self._prepare_task = asyncio.ensure_future(self._prepare())
            await asyncio.shield(self._prepare_task)
            assert self._backend is not None
        return self._backend

    async def _prepare(self) -> None:
        backend: Backend
        if self._url is not None:
            backend = RemoteServer(self._url, self._api_key, startup_timeout=self._timeout,
                                   connect_timeout=self._connect_timeout,
                                   on_event=self._on_event)
        else:
            assert self._server_config is not None
            backend = LaunchedServer(self.model_type, self._server_config,
                                     api_key=self._api_key, on_event=self._on_event)
        await backend.open()
        # Building the SDK client and its lazy imports cost tens of ms: in a thread, so the
        # event loop never stalls.
        self._client = await asyncio.to_thread(self._build_client, backend.pool.client)
        if self._closed:
            await backend.aclose()
            raise ModelClosedError("the model is closed")
        self._backend = backend

    def _build_client(self, http: _http.httpx.AsyncClient) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            api_key="placeholder", base_url="http://127.0.0.1/v1", http_client=http,
            max_retries=0, timeout=self._request_timeout(),
        )
        asyncio.run(warm_up_request_path())
        return client

    def _openai(self, lease: Lease) -> openai.AsyncOpenAI:
        # Re-pointed once per server run (the URL is stable: the port is reserved; the pool
        # is renewed per run), so the hot path is one tuple comparison.
        target = (lease.http, lease.base_url, lease.api_key)
        client = self._client
        assert client is not None
        if target != self._client_target:
            client = client.with_options(
                base_url=f"{lease.base_url}/v1", api_key=lease.api_key or _NO_KEY,
                http_client=lease.http,
            )
            self._client, self._client_target = client, target
        return client

    # -- chat ----------------------------------------------------------------------------
    @overload
    async def run(
        self,
        messages: Any,
        response_format: type[ModelT],
        tools: Any = None,
        *,
        stream: Literal[False] | None = None,
    ) -> ParsedChatCompletion[ModelT]: ...
    @overload
    async def run(
        self,
        messages: Any,
        response_format: Mapping[str, Any] | None = None,
        tools: Any = None,
        *,
        stream: Literal[False],
    ) -> ChatCompletion: ...
    @overload
    async def run(
        self,
        messages: Any,
        response_format: Mapping[str, Any] | None = None,
        tools: Any = None,
        *,
        stream: Literal[True],
    ) -> ChatStream: ...
    @overload
    async def run(
        self,
        messages: Any,
        response_format: Mapping[str, Any] | None = None,
        tools: Any = None,
        *,
        stream: bool | None = None,
    ) -> ChatCompletion | ChatStream: ...
    async def run(
        self,
        messages: Any,
        response_format: Any = None,
        tools: Any = None,
        *,
        stream: bool | None = None,
    ) -> ChatCompletion | ChatStream:
        """Run a chat completion.

        Args:
            messages: OpenAI-format messages (dicts or the SDK's typed params).
            response_format: a pydantic model class (the reply's ``message.parsed`` is then a
                validated instance) or an OpenAI ``response_format`` dict.
            tools: OpenAI tool dicts or pydantic model classes.
            stream: override ``model_config_dict["stream"]`` for this call.

        Returns:
            a ``ChatCompletion`` (``ParsedChatCompletion`` for a pydantic response_format), or a
            :class:`ChatStream` of ``ChatCompletionChunk`` when streaming.
        """
        if self._closed:
            raise ModelClosedError("the model is closed")
        request = self.chat_request(messages, response_format, tools, stream=stream)
        if request.stream:
            return await self._open_stream(request.kwargs, request.rid)
        return request.finish(await self._request(request.kwargs, request.rid))

    def chat_request(
        self,
        messages: Any,
        response_format: Any = None,
        tools: Any = None,
        *,
        stream: bool | None = None,
    ) -> ChatRequest:
        """What :meth:`run` would send, validated and built without any I/O.

        The async model and the blocking facade both send exactly this (one builder, no
        drift); it is also a way to see the request a call makes.
        """
        checked = check_messages(messages)
        tool_list = check_tools(tools) if tools is not None else self._default_tools
        wire_format, parse_into = build_response_format(response_format)
        # SGLang applies one output constraint; a second one is a 400 after the round trip.
        check_constraints(wire_format, self._extra_body.get("regex"), self._extra_body.get("ebnf"))
        streaming = self._config.stream if stream is None else bool(stream)
        if streaming and parse_into is not None:
            raise ConfigError("a pydantic response_format cannot be combined with streaming")
        if tool_list and self._server_config is not None and (
            self._server_config.tool_call_parser is None
        ):
            raise ToolCallParserMissingError(
                "tools need SGLang's tool-call parser: set ServerConfig(tool_call_parser=...) "
                "to the model family's parser (e.g. 'qwen', 'llama3', 'mistral', "
                "'deepseekv3'); without it SGLang returns the raw call text in content"
            )
        kwargs: dict[str, Any] = {**self._kwargs, "messages": checked}
        if tool_list:
            kwargs["tools"] = tool_list
        if wire_format is not None:
            kwargs["response_format"] = wire_format
        # Every request carries a rid, so a cancelled one can be aborted on the server.
        rid = self._extra_body.get("rid") or new_rid()
        if self._extra_body.get("lora_path") is not None:
            check_adapter_name(self._extra_body["lora_path"], self._known_adapters())
        kwargs["extra_body"] = {**self._extra_body, "rid": rid}
        kwargs["model"] = self._request_model
        if streaming:
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
        return ChatRequest(kwargs=kwargs, rid=rid, stream=streaming, parse_into=parse_into)

    async def _request(self, kwargs: dict[str, Any], rid: str | None = None) -> ChatCompletion:
        kwargs = {"model": self._request_model, **kwargs}

        async def send(lease: Lease) -> ChatCompletion:
            completion: ChatCompletion = await self._openai(lease).chat.completions.create(
                **kwargs
            )
            return completion

        return await self._path.call(send, rid=rid)

    async def _open_stream(self, kwargs: dict[str, Any], rid: str | None = None) -> ChatStream:
        kwargs = {"model": self._request_model, **kwargs}

        async def send(lease: Lease) -> openai.AsyncStream[ChatCompletionChunk]:
            stream: openai.AsyncStream[ChatCompletionChunk] = (
                await self._openai(lease).chat.completions.create(**kwargs)
            )
            return stream

        stream, lease = await self._path.open(send, rid=rid)
        return ChatStream(stream, lease, rid, path=self._path, registry=self._streams)

    async def _tokenize(
        self, body: dict[str, Any], messages: list[Mapping[str, Any]] | None = None
    ) -> int:
        async def send(lease: Lease) -> Any:
            url, headers = lease.direct()  # routers do not route /tokenize
            return await lease.http.post(f"{url}/tokenize", json=body, headers=headers,
                                         timeout=self._request_timeout())

        response = await self._path.call(send)
        if response.status_code in (404, 405) and messages is not None:
            # Not an SGLang server: count via the usage of a one-token completion.
            completion = await self._request({"messages": messages, "max_tokens": 1})
            if completion.usage is None:
                raise RequestError("the server reports no usage; cannot count tokens")
            return completion.usage.prompt_tokens
        count = check_response(response).json().get("count")
        if not isinstance(count, int):
            raise RequestError(f"/tokenize answered without a count: {response.text[:200]}",
                               status_code=response.status_code)
        return count


_MODELS: weakref.WeakSet[AsyncSGLangModel] = weakref.WeakSet()
_pid = os.getpid()


def _forget_models_after_fork() -> None:
    """In a forked child: every inherited model refuses work and never touches the parent's
    server (its process, loop and connections did not come along)."""
    global _pid
    parent, _pid = _pid, os.getpid()
    for model in list(_MODELS):
        model._forked_from = parent


def _remember_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(before=_remember_pid, after_in_child=_forget_models_after_fork)
