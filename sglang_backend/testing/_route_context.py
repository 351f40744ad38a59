"""What the stand-in's route modules share: the request context, the early reply, and the usage body."""


from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from sglang_backend.testing._engine import (
    Generation,
)
from sglang_backend.testing._protocol import (
    ChatCompletionRequest,
    CompletionRequest,
)
from sglang_backend.testing._replies import BadRequest as _BadRequest
from sglang_backend.testing._replies import openai_error, validated_body
from sglang_backend.testing._state import ServerState

__all__ = ["Reply", "RouteContext", "off_loop", "stop_regex", "usage_body"]

BodyT = TypeVar("BodyT", bound=BaseModel)


class Reply(Exception):
    """Ends a route early with a ready response (rendered by the app's handler)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


@dataclass
class RouteContext:
    """One server's state and the two helpers every route uses."""

    state: ServerState

    async def parse_body(self, request: Request, model: type[BodyT], *, crash: bool = False) -> BodyT:
        """The request body as ``model``, or SGLang's 400 (after the crash, if this request
        is the one that must crash the server)."""
        try:
            return await validated_body(request, model)
        except _BadRequest as exc:
            error = openai_error(exc.message, exc.err_type)
        if crash:
            await self.state.crash_now()
        raise Reply(error)

    async def pace(self, tokens: int) -> None:
        """Sleep ``--standin-token-delay`` per token (a slow model)."""
        delay = max(self.state.args.standin_token_delay, 0.0)
        if delay > 0 and tokens > 0:
            await asyncio.sleep(delay * tokens)


def usage_body(
    prompt_tokens: int, completion_tokens: int, reasoning_tokens: int, cache_report: bool
) -> dict[str, Any]:
    """SGLang's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0} if cache_report else None,
        "reasoning_tokens": reasoning_tokens,
        "completion_tokens_details": (
            {"reasoning_tokens": reasoning_tokens} if reasoning_tokens > 0 else None
        ),
    }


async def off_loop(sampled: bool, decode: Callable[..., Generation], *args: Any) -> Generation:
    """Run a decode; the grammar engine's (tens of ms) in a worker thread, off the event loop."""
    if not sampled:
        return decode(*args)
    return await asyncio.to_thread(decode, *args)


def stop_regex(req: ChatCompletionRequest | CompletionRequest) -> list[str]:
    """``stop_regex`` as a list."""
    value = req.stop_regex
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
