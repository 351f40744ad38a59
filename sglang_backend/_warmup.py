"""Paying the SDK's first-request costs early, off the event loop."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from . import _http

__all__ = ["warm_up_request_path"]


async def warm_up_request_path() -> None:
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
