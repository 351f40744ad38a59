"""Pydantic AI on an SGLang server: an ``OpenAIChatModel`` whose provider owns the server.

::

    from pydantic_ai import Agent
    from sglang_backend import AsyncSGLangModel, ServerConfig
    from sglang_backend.integrations.pydantic_ai import sglang_chat_model

    model = sglang_chat_model(AsyncSGLangModel("Qwen/Qwen2.5-7B-Instruct",
                                               server=ServerConfig(tool_call_parser="qwen")))
    agent = Agent(model, instructions="Be brief.")
    async with agent:                       # the server is stopped when the agent exits
        result = await agent.run("Hello")   # ...and started by the first request

:func:`sglang_chat_model` does no I/O: the server starts on the first request (or when the
agent is entered) and stops when the last ``async with agent:`` (or ``async with model:``)
exits. :func:`sglang_model` is the same as an async context manager of its own. Needs
``pip install 'sglang-backend[pydantic-ai]'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from ..model import AsyncSGLangModel
from ._common import ManagedEndpoint, missing_extra

try:
    from pydantic_ai.models.openai import OpenAIChatModel  # type: ignore[import-not-found, unused-ignore]
    from pydantic_ai.providers.openai import OpenAIProvider  # type: ignore[import-not-found, unused-ignore]
except ImportError as exc:
    raise missing_extra("pydantic-ai", "Pydantic AI (pydantic-ai-slim[openai])") from exc

__all__ = ["SGLangProvider", "sglang_chat_model", "sglang_model"]


class SGLangProvider(OpenAIProvider):  # type: ignore[misc, unused-ignore]
    """An ``OpenAIProvider`` on an SGLang server supervised by sglang_backend.

    Every request is admitted by the model (started or relaunched on demand, never
    idle-stopped mid-request). Entering the provider (``async with agent:`` does) starts the
    server; leaving the last entry closes the model when ``close=True``.
    """

    def __init__(self, model: AsyncSGLangModel, *, close: bool = True) -> None:
        self._endpoint = ManagedEndpoint(model)
        self._close_model = close
        super().__init__(openai_client=self._endpoint.lazy_openai_client())

    @property
    def name(self) -> str:
        return "sglang"

    @property
    def endpoint(self) -> ManagedEndpoint:
        """``openai_base_url``, ``api_key`` and ``ready()`` of the server."""
        return self._endpoint

    @property
    def sglang_model(self) -> AsyncSGLangModel:
        return self._endpoint.model

    async def __aenter__(self) -> SGLangProvider:
        await super().__aenter__()
        await self._endpoint.model.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        result: bool | None = await super().__aexit__(exc_type, exc_val, exc_tb)
        if self._entered_count == 0 and self._close_model:
            try:
                await self._endpoint.aclose()
            finally:
                await self._endpoint.model.aclose()
        return result


def sglang_chat_model(
    model: AsyncSGLangModel, *, close: bool = True, **options: Any
) -> OpenAIChatModel:
    """An ``OpenAIChatModel`` on ``model``'s server (no I/O; the first request starts it).

    ``options`` go to ``OpenAIChatModel`` (``settings=``, ``profile=``).
    """
    provider = SGLangProvider(model, close=close)
    name = provider.endpoint.model_name
    return OpenAIChatModel(name, provider=provider, **options)


@contextlib.asynccontextmanager
async def sglang_model(
    model: AsyncSGLangModel, *, close: bool = True, **options: Any
) -> AsyncIterator[OpenAIChatModel]:
    """Start ``model``'s server, yield an ``OpenAIChatModel`` on it, stop it on exit."""
    chat_model = sglang_chat_model(model, close=close, **options)
    async with chat_model:
        yield chat_model
