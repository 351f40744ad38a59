"""The OpenAI Agents SDK on an SGLang server: ``OpenAIChatCompletionsModel`` over the endpoint.

::

    from agents import Agent, Runner
    from sglang_backend import AsyncSGLangModel, ServerConfig
    from sglang_backend.integrations.openai_agents import sglang_agents_model

    async with sglang_agents_model(AsyncSGLangModel("Qwen/Qwen2.5-7B-Instruct",
                                                    server=ServerConfig(tool_call_parser="qwen"))) as model:
        agent = Agent(name="assistant", instructions="Be brief.", model=model)
        result = await Runner.run(agent, "Hello")

The SDK's trace export (to OpenAI's servers) is switched off by default: nothing leaves the
machine. Needs ``pip install 'sglang-backend[openai-agents]'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ..model import AsyncSGLangModel
from ._common import ManagedEndpoint, managed_endpoint, missing_extra

try:
    from agents import (  # type: ignore[import-not-found, unused-ignore]
        OpenAIChatCompletionsModel,
        set_tracing_disabled,
    )
except ImportError as exc:
    raise missing_extra("openai-agents", "the OpenAI Agents SDK (openai-agents)") from exc

__all__ = ["chat_completions_model", "sglang_agents_model"]


def chat_completions_model(endpoint: ManagedEndpoint, **options: Any) -> OpenAIChatCompletionsModel:
    """An ``OpenAIChatCompletionsModel`` on ``endpoint`` (an ``AsyncOpenAI`` at ``…/v1``).

    ``options`` go to ``OpenAIChatCompletionsModel`` (e.g. ``buffer_streamed_tool_calls``).
    """
    return OpenAIChatCompletionsModel(
        model=endpoint.model_name, openai_client=endpoint.openai_client(), **options
    )


@contextlib.asynccontextmanager
async def sglang_agents_model(
    model: AsyncSGLangModel,
    *,
    close: bool = True,
    disable_tracing: bool = True,
    **options: Any,
) -> AsyncIterator[OpenAIChatCompletionsModel]:
    """Start ``model``'s server and yield an Agents SDK model on it; stop it on exit.

    Args:
        model: the SGLang model (launch or connect mode).
        close: close ``model`` (stop its server) on exit.
        disable_tracing: call ``agents.set_tracing_disabled(True)`` (a process-wide switch):
            the SDK would otherwise try to upload traces to OpenAI.
        options: passed to ``OpenAIChatCompletionsModel``.
    """
    if disable_tracing:
        set_tracing_disabled(True)
    async with managed_endpoint(model, close=close) as endpoint:
        yield chat_completions_model(endpoint, **options)
