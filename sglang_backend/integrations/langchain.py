"""LangChain on an SGLang server: ``ChatOpenAI`` wired to the managed endpoint.

::

    from sglang_backend import AsyncSGLangModel, ServerConfig
    from sglang_backend.integrations.langchain import sglang_chat_openai

    async with sglang_chat_openai(AsyncSGLangModel("Qwen/Qwen2.5-7B-Instruct",
                                                   server=ServerConfig(tool_call_parser="qwen"))) as llm:
        reply = await llm.ainvoke("Hello")
        async for chunk in llm.astream("Tell me more"):
            print(chunk.content, end="")

The yielded object is a plain ``langchain_openai.ChatOpenAI``: ``bind_tools``,
``with_structured_output``, LCEL chains and LangGraph work as usual. Its async requests go
through the model's admission (started or relaunched on demand, never idle-stopped under a
request); use the async methods (``ainvoke``, ``astream``, ``abatch``). Sync ``invoke`` works
too but bypasses admission, so keep ``ServerConfig(inactivity_timeout=None)`` if you use it.
Needs ``pip install 'sglang-backend[langchain]'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ..model import AsyncSGLangModel
from ._common import ManagedEndpoint, managed_endpoint, missing_extra

try:
    from langchain_openai import ChatOpenAI  # type: ignore[import-not-found, unused-ignore]
except ImportError as exc:
    raise missing_extra("langchain", "LangChain (langchain-openai)") from exc

__all__ = ["chat_openai", "sglang_chat_openai"]


def chat_openai(endpoint: ManagedEndpoint, **options: Any) -> ChatOpenAI:
    """A ``ChatOpenAI`` on a started endpoint; ``options`` go to ``ChatOpenAI``.

    ``max_retries`` defaults to 0 (admission already waits for a start) and ``stream_usage``
    to True (SGLang reports usage in the last chunk).
    """
    options.setdefault("max_retries", 0)
    options.setdefault("stream_usage", True)
    return ChatOpenAI(
        model=endpoint.model_name,
        base_url=endpoint.openai_base_url,
        api_key=endpoint.api_key,
        http_async_client=endpoint.http_client(),
        **options,
    )


@contextlib.asynccontextmanager
async def sglang_chat_openai(
    model: AsyncSGLangModel, *, close: bool = True, **options: Any
) -> AsyncIterator[ChatOpenAI]:
    """Start ``model``'s server, yield a ``ChatOpenAI`` on it, stop it on exit.

    ``options`` go to ``ChatOpenAI`` (``temperature=``, ``model_kwargs=``, ...).
    """
    async with managed_endpoint(model, close=close) as endpoint:
        yield chat_openai(endpoint, **options)
