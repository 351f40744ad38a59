"""AsyncSGLangModel: OpenAI-compatible chat on a server this library launches or connects to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ParsedChatCompletion

from . import _http
from ._lease import Lease, LeaseContext, RequestPath, direct_headers, direct_urls
from ._requests import build_response_format, check_constraints, check_messages, check_tools
from ._streams import ChatStream, GenerateStream, LeasedStream
from ._translate import check_response
from ._transport import LeasedAsyncTransport
from .config import ServerConfig, SGLangConfig
from .errors import (
    ConfigError,
    InvalidRequestError,
    ModelClosedError,
    RequestError,
    StructuredOutputError,
    ToolCallParserMissingError,
)
from .native import (
    ADMIN_ENDPOINTS,
    GenerateRequest,
    GenerateResult,
    LoRAUpdateResult,
    SamplingParams,
    UpdateWeightsResult,
    build_generate,
    check_adapter_name,
    check_memory_tags,
    check_native,
    check_rid,
    new_rid,
    parse_generate,
)
from .router import WorkerInfo
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


@dataclass(frozen=True)
class ChatRequest:
    """A chat call built and validated, not yet sent (:meth:`AsyncSGLangModel.chat_request`).

    Attributes:
        kwargs: the SDK's ``chat.completions.create`` arguments (``model`` included).
        rid: the request id the server knows the request by (aborts name it).
        stream: whether the reply is streamed.
        parse_into: the pydantic model a structured reply is validated into, if any.
    """

    kwargs: dict[str, Any]
    rid: str
    stream: bool
    parse_into: type[pydantic.BaseModel] | None = None

    def finish(self, completion: ChatCompletion) -> ChatCompletion:
        """The reply as :meth:`AsyncSGLangModel.run` returns it (parsed when asked)."""
        if self.parse_into is not None:
            return _parse(completion, self.parse_into)
        return completion


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


class AsyncSGLangModel:
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
        # LoRA adapters loaded at run time (name -> (path, pinned)), loaded again after every
        # relaunch; launch-time adapters (lora_paths) unloaded since, unloaded again.
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

    # -- the workers of a router group ----------------------------------------------------
    def _group_server(self) -> LaunchedServer:
        server = self.server
        if server is None:
            raise ConfigError("workers are managed by a launched router group "
                              "(ServerConfig(replicas=N) or worker_urls=[...]), not in connect mode")
        return server

    async def add_worker(self, url: str, api_key: str | None = None) -> str:
        """Put a running SGLang server at ``url`` (not launched by the library) into the router
        group's rotation; return its worker id.

        ``api_key=None`` sends the group's key. Returns once the router lists it; it is then
        health-checked and reported (events ``worker_unhealthy`` / ``worker_healthy``). Lasts
        until the group's next relaunch, which starts from ``ServerConfig`` again.
        """
        return await self._group_server().add_worker(url, api_key)

    async def remove_worker(self, worker_id: str) -> None:
        """Take a worker out of rotation: the router drains it (requests in flight finish),
        then a local worker is stopped; a worker elsewhere keeps running (``worker_removed``)."""
        await self._group_server().remove_worker(worker_id)

    async def workers(self) -> list[WorkerInfo]:
        """Every worker of the group: the router's id, URL, local or remote, healthy, and
        requests in flight as the router counts them (as last polled, every second)."""
        return self._group_server().workers()

    # -- SGLang's native endpoints --------------------------------------------------------
    async def _native(self, path: str, body: Mapping[str, Any] | None = None,
                      *, method: str = "POST", direct: bool = False) -> Any:
        """Send one native request under a lease; the decoded JSON (or text) answer.

        ``direct``: to a server that runs it even behind a router (routers answer 404 for
        ``/tokenize``, ``/detokenize`` and the like).
        """
        async def send(lease: Lease) -> Any:
            url, headers = lease.direct() if direct else (lease.base_url, lease.headers)
            return await lease.http.request(method, f"{url}{path}", json=body,
                                            headers=headers, timeout=self._request_timeout())

        response = check_response(await self._path.call(send))
        try:
            return response.json()
        except ValueError:
            return response.text

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text`` under the served model's tokenizer (``/tokenize``)."""
        if not isinstance(text, str):
            raise InvalidRequestError(f"text must be a str, got {type(text).__name__}")
        data = await self._native("/tokenize", {"prompt": text,
                                                "add_special_tokens": add_special_tokens},
                                  direct=True)
        self._context_length = data.get("max_model_len") or self._context_length
        return [int(token) for token in data["tokens"]]

    async def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens`` under the served model's tokenizer (``/detokenize``)."""
        data = await self._native("/detokenize", {"tokens": [int(t) for t in tokens]},
                                  direct=True)
        return str(data["text"])

    async def context_length(self) -> int:
        """The served model's context window (``max_model_len``)."""
        if self._context_length is None:
            await self.tokenize("")
        if self._context_length is None:
            raise RequestError("the server does not report its context length")
        return int(self._context_length)

    # == SGLang's native endpoints (issue 18) ===========================================
    # generate, abort, LoRA adapters, weights, cache, memory, pause. Each request is built
    # and validated in sglang_backend.native before any I/O; here each is one `send`.
    # Admin routes (native.ADMIN_ENDPOINTS) carry ServerConfig.admin_api_key when set, and go
    # to every worker of a router group (routers do not forward them).

    @overload
    async def generate(
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
    async def generate(
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
    ) -> GenerateStream: ...
    async def generate(
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
    ) -> GenerateResult | list[GenerateResult] | GenerateStream:
        """SGLang's native ``/generate``.

        Args:
            text: a prompt, or a list of prompts (a batch); or pass ``input_ids``.
            input_ids: token ids (a list), or a list of lists (a batch).
            sampling_params: :class:`~sglang_backend.native.SamplingParams` or a dict with
                SGLang's names (``max_new_tokens``, ``temperature``, ``n``, ``regex``, …);
                unknown keys raise :class:`InvalidRequestError` before any I/O.
            return_logprob: return token logprobs in ``meta_info``.
            top_logprobs_num: how many top alternatives per token (with ``return_logprob``).
            logprob_start_len: the prompt position logprobs start at.
            lora_path: the name of a loaded LoRA adapter to generate with.
            rid: the request id (generated, 32 hex, unless given; a list for a batch). A
                cancelled call is aborted on the server by it.
            stream: return a :class:`GenerateStream` of chunks (a batch or ``n > 1``
                interleaves its outputs, each chunk naming its ``index``).

        Returns:
            a :class:`~sglang_backend.native.GenerateResult`; a list of them for a batch or
            ``n > 1``; a :class:`GenerateStream` with ``stream=True``.
        """
        if self._closed:
            raise ModelClosedError("the model is closed")
        if lora_path is not None:
            self._check_lora_on("lora_path")
        request = build_generate(
            text, input_ids=input_ids, sampling_params=sampling_params,
            return_logprob=return_logprob, top_logprobs_num=top_logprobs_num,
            logprob_start_len=logprob_start_len, lora_path=lora_path, rid=rid, stream=stream,
            loaded_adapters=self._known_adapters(),
        )
        if request.stream:
            return await self._generate_stream(request)

        async def send(lease: Lease) -> Any:
            return await lease.http.post(f"{lease.base_url}/generate", json=request.body,
                                         headers=lease.headers, timeout=self._timeout)

        response = check_native(await self._path.call(send, rid=request.rids))
        return parse_generate(request, response.json())

    async def _generate_stream(self, request: GenerateRequest) -> GenerateStream:
        async def send(lease: Lease) -> _http.httpx.Response:
            http = lease.http
            response = await http.send(
                http.build_request("POST", f"{lease.base_url}/generate", json=request.body,
                                   headers=lease.headers, timeout=self._timeout),
                stream=True,
            )
            if response.status_code >= 400:  # refused before streaming: a plain JSON error
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                check_native(response)
            return response

        response, lease = await self._path.open(send, rid=request.rids)
        return GenerateStream(response, lease, request.rids, path=self._path,
                              registry=self._streams)

    async def abort(self, rid: str) -> None:
        """Abort the request ``rid`` on the server (every worker behind a router)."""
        rid = check_rid(rid)
        if self._idle_launch():
            return  # no server runs: nothing to abort
        await self._path.call(lambda lease: self._path.abort(lease, {"rid": rid}))

    async def abort_all(self) -> None:
        """Abort every request the server runs (``abort_all``; every worker behind a router)."""
        if self._idle_launch():
            return
        await self._path.call(
            lambda lease: self._path.abort(lease, {"rid": "", "abort_all": True}))

    # -- LoRA adapters --------------------------------------------------------------------
    @property
    def lora_adapters(self) -> dict[str, str]:
        """The adapters this model believes loaded, name -> path: ``ServerConfig.lora_paths``
        and those loaded with :meth:`load_lora_adapter`, less those unloaded."""
        config = self._server_config
        static = config.lora_paths if config is not None else {}
        names = {n: p for n, p in static.items() if n not in self._lora_unloaded}
        names.update({n: p for n, (p, _) in self._lora_loaded.items()})
        return names

    async def load_lora_adapter(self, name: str, path: str, pinned: bool = False) -> LoRAUpdateResult:
        """Load a LoRA adapter (``/load_lora_adapter``); requests then select it by ``name``.

        In launch mode it is loaded again after every relaunch (idle stop, crash) before the
        first request is admitted. Needs ``ServerConfig(enable_lora=True)``.
        """
        if not isinstance(name, str) or not name or set(name) & set("=:/ "):
            raise InvalidRequestError(
                f"name must be a non-empty adapter name without '=', ':', '/' or spaces, got {name!r}")
        if not isinstance(path, str) or not path:
            raise InvalidRequestError(f"path must be a non-empty path or Hub id, got {path!r}")
        if not isinstance(pinned, bool):
            raise InvalidRequestError(f"pinned must be a bool, got {pinned!r}")
        self._check_lora_on("load_lora_adapter")
        data = await self._each_server(
            "/load_lora_adapter", {"lora_name": name, "lora_path": path, "pinned": pinned})
        result = LoRAUpdateResult.model_validate(data)
        self._lora_loaded[name] = (path, pinned)
        self._lora_unloaded.discard(name)
        self._keep_adapters()
        return result

    async def unload_lora_adapter(self, name: str) -> LoRAUpdateResult:
        """Unload a LoRA adapter (``/unload_lora_adapter``); it stays unloaded after relaunches."""
        self._check_lora_on("unload_lora_adapter")
        name = check_adapter_name(name, self._known_adapters())
        data = await self._each_server("/unload_lora_adapter", {"lora_name": name})
        result = LoRAUpdateResult.model_validate(data)
        self._lora_loaded.pop(name, None)
        config = self._server_config
        if config is not None and name in config.lora_paths:
            self._lora_unloaded.add(name)
        self._keep_adapters()
        return result

    def _known_adapters(self) -> set[str] | None:
        # Launch mode knows what it loaded; a server it connects to judges by itself.
        return set(self.lora_adapters) if self._server_config is not None else None

    def _check_lora_on(self, what: str) -> None:
        config = self._server_config
        if config is not None and not config.lora_enabled:
            raise InvalidRequestError(
                f"{what}: LoRA is off on this server; set ServerConfig(enable_lora=True) "
                "(or lora_paths)")

    def _keep_adapters(self) -> None:
        server = self.server
        if server is not None and not self._lora_hooked:
            server.add_after_ready(self._restore_adapters)
            self._lora_hooked = True

    async def _restore_adapters(self, server: LaunchedServer) -> None:
        """After a relaunch, before admission: the run-time adapter changes again."""
        config = self._server_config
        unload = sorted(self._lora_unloaded & set(config.lora_paths if config else {}))
        if not (unload or self._lora_loaded):
            return
        client = server.pool.client
        for url in direct_urls(server):
            headers = direct_headers(server, url, admin=True)
            for name in unload:
                check_native(await client.post(f"{url}/unload_lora_adapter",
                                               json={"lora_name": name}, headers=headers,
                                               timeout=self._timeout))
            for name, (path, pinned) in self._lora_loaded.items():
                check_native(await client.post(
                    f"{url}/load_lora_adapter",
                    json={"lora_name": name, "lora_path": path, "pinned": pinned},
                    headers=headers, timeout=self._timeout))

    # -- weights, cache, memory, pause ------------------------------------------------------
    async def update_weights_from_disk(self, model_path: str,
                                       load_format: str | None = None) -> UpdateWeightsResult:
        """Load new weights in place (``/update_weights_from_disk``). A relaunch loads the
        launch ``model_path`` again."""
        if not isinstance(model_path, str) or not model_path:
            raise InvalidRequestError(f"model_path must be a non-empty path, got {model_path!r}")
        body: dict[str, Any] = {"model_path": model_path}
        if load_format is not None:
            if not isinstance(load_format, str) or not load_format:
                raise InvalidRequestError(f"load_format must be a non-empty str, got {load_format!r}")
            body["load_format"] = load_format
        return UpdateWeightsResult.model_validate(
            await self._each_server("/update_weights_from_disk", body))

    async def flush_cache(self) -> str:
        """Flush the radix (prefix) cache (``/flush_cache``); refused (400) while requests run."""
        return str(await self._each_server("/flush_cache", None))

    async def server_info(self) -> dict[str, Any]:
        """``/server_info``: the server's arguments and state."""
        data = await self._native("/server_info", method="GET")
        return dict(data) if isinstance(data, Mapping) else {"info": data}

    async def model_info(self) -> dict[str, Any]:
        """``/model_info``: the served model's path, type and capabilities."""
        data = await self._native("/model_info", method="GET")
        return dict(data) if isinstance(data, Mapping) else {"info": data}

    async def pause_generation(self, mode: Literal["abort", "retract", "in_place"] = "abort") -> None:
        """Pause the scheduler (``/pause_generation``); ``mode`` says what happens to running
        requests (SGLang's default ``abort`` aborts them)."""
        if mode not in ("abort", "retract", "in_place"):
            raise InvalidRequestError(f"mode must be abort, retract or in_place, got {mode!r}")
        await self._each_server("/pause_generation", {"mode": mode})

    async def continue_generation(self) -> None:
        """Resume a paused scheduler (``/continue_generation``)."""
        await self._each_server("/continue_generation", {})

    async def release_memory_occupation(self, tags: list[str] | None = None) -> None:
        """Release GPU memory (``kv_cache``, ``weights``, ``cuda_graph``; None: all) while the
        process stays up; generation waits until :meth:`resume_memory_occupation`."""
        await self._each_server("/release_memory_occupation", check_memory_tags(tags))

    async def resume_memory_occupation(self, tags: list[str] | None = None) -> None:
        """Take the memory released by :meth:`release_memory_occupation` back."""
        await self._each_server("/resume_memory_occupation", check_memory_tags(tags))

    async def _each_server(self, path: str, body: Mapping[str, Any] | None) -> Any:
        """POST to every server of the lease (each worker of a router group), with the admin
        key on admin routes; the first server's decoded answer."""
        if self._closed:
            raise ModelClosedError("the model is closed")

        admin = path in ADMIN_ENDPOINTS

        async def send(lease: Lease) -> list[Any]:
            return list(await asyncio.gather(*(
                lease.http.post(f"{url}{path}", json=body, timeout=self._timeout,
                                headers=lease.direct_headers(url, admin=admin))
                for url in lease.direct_urls)))

        responses = [check_native(r) for r in await self._path.call(send)]
        try:
            return responses[0].json()
        except ValueError:
            return responses[0].text

    def _idle_launch(self) -> bool:
        """Launch mode with no server running (an abort then has nothing to stop)."""
        server = self.server
        if self._server_config is None:
            return False
        return server is None or server.state is not ServerState.READY

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
        asyncio.run(_warm_up_request_path())
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


async def _warm_up_request_path() -> None:
    """Run one request through throwaway clients against a closed port (in a worker thread).

    The SDK and the HTTP stack import and build most of their request machinery on the first
    request (tens of ms of pydantic model builds, the connect path): paying it here, off the
    event loop and while the server loads, keeps the first real request fast and the loop free.
    """
    with socket.socket() as closed:  # bound, never listening: connections are refused at once
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
        async with openai.AsyncOpenAI(
            api_key="warm-up", base_url=url, max_retries=0, http_client=_http.new_async_client()
        ) as client:
            with contextlib.suppress(openai.APIError):
                await client.chat.completions.create(
                    model="warm-up", messages=[{"role": "user", "content": "warm-up"}]
                )
            with contextlib.suppress(openai.APIError):
                stream = await client.chat.completions.create(
                    model="warm-up", messages=[{"role": "user", "content": "warm-up"}],
                    stream=True, stream_options={"include_usage": True},
                )
                await stream.close()
    ChatCompletion.model_validate(_SAMPLE_COMPLETION)
    ChatCompletionChunk.model_validate(_SAMPLE_CHUNK)


_SAMPLE_COMPLETION: dict[str, Any] = {
    "id": "0", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": ""}}],
}
_SAMPLE_CHUNK: dict[str, Any] = {
    "id": "0", "object": "chat.completion.chunk", "created": 0, "model": "m",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
}


def _parse(completion: ChatCompletion, into: type[pydantic.BaseModel]) -> ChatCompletion:
    choices = []
    for choice in completion.choices:
        raw = choice.message.content
        if choice.finish_reason == "length":
            raise StructuredOutputError(
                "the reply was cut at max_tokens before the JSON was complete", raw=raw
            )
        try:
            parsed = into.model_validate_json(raw or "")
        except pydantic.ValidationError as exc:
            raise StructuredOutputError(
                f"the reply does not validate against {into.__name__}: "
                f"{exc.errors()[0]['msg'] if exc.errors() else exc}",
                raw=raw,
            ) from exc
        dumped = choice.model_dump()
        dumped["message"]["parsed"] = parsed
        choices.append(dumped)
    data = completion.model_dump()
    data["choices"] = choices
    result: ParsedChatCompletion[Any] = ParsedChatCompletion[into].model_validate(  # type: ignore[valid-type]
        data
    )
    return result
