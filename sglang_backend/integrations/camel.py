"""CAMEL-AI on sglang_backend: a drop-in for ``camel.models.SGLangModel``.

::

    from camel.agents import ChatAgent
    from sglang_backend import ServerConfig
    from sglang_backend.integrations.camel import SGLangModel

    with SGLangModel("Qwen/Qwen2.5-7B-Instruct", server=ServerConfig(tool_call_parser="qwen")) as model:
        agent = ChatAgent("You are helpful.", model=model)
        print(agent.step("Hello").msgs[0].content)

Same constructor as CAMEL's own backend (``model_type, model_config_dict, api_key, url,
token_counter, timeout``) plus this library's keywords (``server=``, ``on_event=``). Unlike
CAMEL's, the server is supervised by :class:`sglang_backend.SGLangModel`: fast readiness,
start failures with the server log, relaunch after an idle stop, streaming, pydantic
``response_format``, no orphaned server. Tokens are counted by the served model's own
tokenizer (the server's ``/tokenize``), not tiktoken.

Both ``ChatAgent.step`` (sync) and ``ChatAgent.astep`` (async) work. One server serves both:
it lives on the facade's loop thread, and async calls await it there without blocking the
caller's event loop. Token counting is synchronous in CAMEL; start the model first
(``with``/``async with``, :meth:`SGLangModel.start` or ``await model.astart()``) so a count
never waits for a cold start. Needs ``pip install 'sglang-backend[camel]'``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from .. import sync as _sync
from ..config import ServerConfig
from ..model import AsyncSGLangModel, ChatStream
from ..server import EventCallback, ServerState
from ._common import missing_extra

try:
    from camel.models import BaseModelBackend  # type: ignore[import-not-found, unused-ignore]
    from camel.utils import BaseTokenCounter  # type: ignore[import-not-found, unused-ignore]
except ImportError as exc:
    raise missing_extra("camel", "CAMEL-AI (camel-ai)") from exc

__all__ = ["SGLangModel", "SGLangTokenCounter"]

T = TypeVar("T")


class _Bridge:
    """Runs coroutines on the facade's loop thread, from sync code or from another loop."""

    def __init__(self, facade: _sync.SGLangModel) -> None:
        # The facade's loop is the one the async model (and its server) lives on.
        self._facade = facade

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self._facade.call_async(func, *args)

    async def acall(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        future: Future[T] = self._facade.submit_async(functools.partial(func, *args))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # cancels the task on the loop thread too
            raise


async def _next_chunk(stream: ChatStream) -> ChatCompletionChunk | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


class _AsyncChunkStream:
    """A :class:`ChatStream` living on the loop thread, iterated from the caller's loop."""

    def __init__(self, bridge: _Bridge, stream: ChatStream) -> None:
        self._bridge = bridge
        self._stream = stream

    def __aiter__(self) -> _AsyncChunkStream:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        chunk = await self._bridge.acall(_next_chunk, self._stream)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if not self._stream.closed:
            await self._bridge.acall(self._stream.aclose)

    close = aclose

    async def __aenter__(self) -> _AsyncChunkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class SGLangTokenCounter(BaseTokenCounter):  # type: ignore[misc, unused-ignore]
    """CAMEL's ``BaseTokenCounter`` over the served model's tokenizer (``/tokenize``).

    ``count_tokens_from_messages`` applies the model's chat template, as a request would.
    """

    def __init__(self, model: SGLangModel) -> None:
        self._model = model

    def count_tokens_from_messages(self, messages: Any) -> int:
        counter = self._model.async_model.token_counter
        count: int = self._model.facade.call_async(counter.count_tokens_from_messages,
                                                   list(messages))
        return count

    async def acount_tokens_from_messages(self, messages: Any) -> int:
        counter = self._model.async_model.token_counter
        count: int = await _Bridge(self._model.facade).acall(
            counter.count_tokens_from_messages, list(messages)
        )
        return count

    def encode(self, text: str) -> list[int]:
        return self._model.facade.tokenize(text)

    def decode(self, token_ids: list[int]) -> str:
        return self._model.facade.detokenize(list(token_ids))


class SGLangModel(BaseModelBackend):  # type: ignore[misc, unused-ignore]
    """A CAMEL model backend on an SGLang server supervised by sglang_backend.

    Args:
        model_type: model path / Hugging Face id (``--model-path``), or the served name in
            connect mode.
        model_config_dict: sampling options (CAMEL's ``SGLangConfig().as_dict()`` works too);
            ``{"stream": True}`` makes ``ChatAgent`` stream.
        api_key: server key (launch mode: ``--api-key``; default a random one).
        url: connect to a running server instead of launching one.
        token_counter: a CAMEL ``BaseTokenCounter``; default: :class:`SGLangTokenCounter`.
        timeout: per-request timeout in seconds (default ``MODEL_TIMEOUT`` or 180).
        server: :class:`~sglang_backend.ServerConfig` (launch mode).
        on_event: server lifecycle callback.
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
    ) -> None:
        config = {k: v for k, v in dict(model_config_dict or {}).items() if v is not None}
        self._facade = _sync.SGLangModel(
            model_type, config, api_key, url, None, timeout, server=server, on_event=on_event
        )
        super().__init__(
            model_type, dict(model_config_dict or {}), api_key, url, token_counter,
            self._facade.timeout,
        )
        self._bridge = _Bridge(self._facade)

    @property
    def facade(self) -> _sync.SGLangModel:
        """The blocking sglang_backend model behind this CAMEL backend."""
        return self._facade

    # -- CAMEL's abstract surface ----------------------------------------------------------
    @property
    def token_counter(self) -> BaseTokenCounter:
        counter: Any = getattr(self, "_token_counter", None)
        if counter is None:
            counter = self._token_counter = SGLangTokenCounter(self)
        return counter

    def check_model_config(self) -> None:
        """Validate ``model_config_dict``; raises :class:`~sglang_backend.ConfigError`."""
        self._facade.check_model_config()

    @property
    def stream(self) -> bool:
        return bool(self.model_config_dict.get("stream", False))

    @property
    def token_limit(self) -> int:
        """``max_tokens`` of the config if set, else the served model's context length."""
        limit = self.model_config_dict.get("max_tokens")
        if isinstance(limit, int) and limit > 0:
            return limit
        return self._facade.context_length()

    def _run(
        self,
        messages: Any,
        response_format: Any = None,
        tools: Any = None,
    ) -> ChatCompletion | _sync.SyncChatStream:
        result: ChatCompletion | _sync.SyncChatStream = self._facade.run(
            messages, response_format, tools or None
        )
        return result

    async def _arun(
        self,
        messages: Any,
        response_format: Any = None,
        tools: Any = None,
    ) -> ChatCompletion | _AsyncChunkStream:
        result = await self._bridge.acall(
            self._facade.async_model.run, list(messages), response_format, tools or None
        )
        if isinstance(result, ChatStream):
            return _AsyncChunkStream(self._bridge, result)
        return result

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def async_model(self) -> AsyncSGLangModel:
        """The :class:`~sglang_backend.AsyncSGLangModel` behind this backend."""
        return self._facade.async_model

    @property
    def state(self) -> ServerState:
        return self._facade.state

    @property
    def base_url(self) -> str | None:
        return self._facade.base_url

    @property
    def api_key(self) -> str | None:
        return self._facade.api_key

    def start(self) -> None:
        """Launch (or check) the server and wait until it is ready."""
        self._facade.start()

    async def astart(self) -> None:
        """:meth:`start` without blocking the caller's event loop."""
        await self._bridge.acall(self._facade.async_model.start)

    def is_ready(self) -> bool:
        return self._facade.is_ready()

    def close(self) -> None:
        """Stop the server and release everything (idempotent)."""
        self._facade.close()

    cleanup = close

    async def aclose(self) -> None:
        """:meth:`close` without blocking the caller's event loop."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> SGLangModel:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> SGLangModel:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"camel {self._facade!r}"

