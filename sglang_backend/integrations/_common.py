"""What every framework integration needs from a model: one endpoint, leased requests.

Agent frameworks bring their own OpenAI client. :func:`managed_endpoint` starts the model's
server and hands out what such a client needs (``openai_base_url``, ``api_key``, the request
``model_name``, a ``ready()`` check) plus, better, an HTTP client whose every request is
*admitted by the model*: it waits for (re)launch after an idle stop, counts as in flight (the
server is never idle-stopped under a framework's request or open stream) and marks a crashed
server so the next request relaunches it. The server URL and key stay the same for the model's
whole life (the port is reserved), so a framework's client never needs rebuilding.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import openai

from ..errors import ConfigError, ModelClosedError

if TYPE_CHECKING:
    from ..model import AsyncSGLangModel

__all__ = ["ManagedEndpoint", "managed_endpoint", "missing_extra"]

logger = logging.getLogger("sglang_backend.integrations")


def missing_extra(extra: str, framework: str) -> ImportError:
    """The ImportError an integration raises when its framework is not installed."""
    module = extra.replace("-", "_")
    return ImportError(
        f"sglang_backend.integrations.{module} needs {framework}: "
        f"pip install 'sglang-backend[{extra}]'"
    )


class ManagedEndpoint:
    """A started model seen as an OpenAI-compatible endpoint.

    Attributes:
        model: the :class:`~sglang_backend.AsyncSGLangModel` behind it.
        model_name: the ``model`` value requests must carry.
        openai_base_url: ``http://host:port/v1`` (what OpenAI clients call ``base_url``).
        api_key: the key the server expects (``Authorization: Bearer``).
    """

    def __init__(self, model: AsyncSGLangModel) -> None:
        self.model = model
        self._clients: list[Any] = []

    @property
    def model_name(self) -> str:
        return self.model.request_model

    @property
    def base_url(self) -> str:
        """The server root (no ``/v1``)."""
        url = self.model.base_url
        if not url:
            raise ModelClosedError("the model has no server URL (not started, or closed)")
        return url

    @property
    def started(self) -> bool:
        """True once the server has an address (it may be idle-stopped; it relaunches there)."""
        return bool(self.model.base_url)

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def api_key(self) -> str:
        # A launched server always has a key; a connected one may have none, but OpenAI
        # clients insist on some string.
        return self.model.api_key or "EMPTY"

    def lazy_openai_client(self, **options: Any) -> openai.AsyncOpenAI:
        """Like :meth:`openai_client`; usable before the server starts (its first request
        starts it). Kept for the integrations written against it."""
        return self.openai_client(**options)

    async def ready(self) -> bool:
        """True when the server answers ``/health`` with 200 right now."""
        return await self.model.is_ready()

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` under the served model's tokenizer (no special tokens)."""
        return await self.model.tokenize(text)

    async def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens`` under the served model's tokenizer."""
        return await self.model.detokenize(tokens)

    async def context_length(self) -> int:
        """The served model's context window (``max_model_len``)."""
        return await self.model.context_length()

    def http_client(self) -> Any:
        """A new async HTTP client (the openai SDK's stack) whose requests the model admits
        (:meth:`AsyncSGLangModel.http_client`). Closed with the endpoint."""
        client = self.model.http_client()
        self._clients.append(client)
        return client

    def openai_client(self, **options: Any) -> openai.AsyncOpenAI:
        """An ``AsyncOpenAI`` whose requests the model admits
        (:meth:`AsyncSGLangModel.openai_client`). Closed with the endpoint."""
        client = self.model.openai_client(**options)
        self._clients.append(client)
        return client

    async def aclose(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close() if isinstance(client, openai.AsyncOpenAI) else await client.aclose()

    def __repr__(self) -> str:
        return f"ManagedEndpoint({self.model_name!r}, {self.model.base_url!r})"

    async def __aenter__(self) -> ManagedEndpoint:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _as_async_model(model: Any) -> AsyncSGLangModel:
    from ..model import AsyncSGLangModel

    if isinstance(model, AsyncSGLangModel):
        return model
    raise ConfigError(
        f"expected an AsyncSGLangModel, got {type(model).__name__}; frameworks that run on "
        "asyncio need the async model (a sync SGLangModel's server lives on its own loop)"
    )


@contextlib.asynccontextmanager
async def managed_endpoint(
    model: AsyncSGLangModel, *, close: bool = True
) -> AsyncIterator[ManagedEndpoint]:
    """Start ``model``'s server and yield it as a :class:`ManagedEndpoint`.

    On exit the endpoint's HTTP clients are closed and, with ``close=True`` (the default), the
    model too (its server is stopped). Works in launch and connect (``url=``) mode alike.
    """
    async_model = _as_async_model(model)
    endpoint = ManagedEndpoint(async_model)
    try:
        await async_model.start()
        yield endpoint
    finally:
        try:
            await endpoint.aclose()
        finally:
            if close:
                await async_model.aclose()
