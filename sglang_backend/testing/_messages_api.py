"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) as SGLang 0.5.23 serves it.

SGLang translates the request into a chat completion, runs its chat handler and translates
the answer back (``entrypoints/anthropic/serving.py``). The stand-in does the same: the
translated body goes through its own ``/v1/chat/completions`` route in-process (same
middleware, same registry, the client's disconnect passed on), so the reply is the chat
reply re-shaped.

* Body: ``{"id": "msg_…", "type": "message", "role": "assistant", "content": [thinking?,
  text?, tool_use…], "model", "stop_reason", "usage": {input_tokens, output_tokens}}``
  (``None`` fields left out); ``stop_reason`` ``end_turn`` / ``max_tokens`` / ``tool_use``
  (an abort is ``end_turn``; a matched stop sequence too: SGLang never sets
  ``stop_sequence``).
* Stream: ``event: <type>`` / ``data:`` frames: ``message_start`` (input tokens, 0 output),
  ``content_block_start`` / ``content_block_delta`` (``text_delta``, ``thinking_delta``,
  ``input_json_delta``) / ``content_block_stop`` per block, ``message_delta`` (stop
  reason, output tokens), ``message_stop``; no ping.
* Errors: ``{"type": "error", "error": {"type", "message"}}``; a body that fails
  validation is 400 ``invalid_request_error`` with a ``loc: msg`` digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._messages_protocol import (
    CountTokensRequest,
    MessagesRequest,
    chat_body,
    validation_digest,
)
from sglang_backend.testing._protocol import ChatCompletionRequest
from sglang_backend.testing._replies import BadRequest, JSONResponse, dumps, json_body
from sglang_backend.testing._state import ServerState

__all__ = ["register"]

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 408: "request_timeout_error", 429: "rate_limit_error", 500: "api_error",
    502: "api_error", 503: "overloaded_error", 504: "api_error",
}  # fmt: skip
#: serving_chat's ``_validate_request`` (and conversion) checks, which SGLang reports as
#: ``invalid_request_error``; other chat errors keep their upstream ``type``.
_VALIDATION_PREFIXES = ("Messages cannot be empty", "Tool", "max_completion_tokens is too large")
Message = MutableMapping[str, Any]


def error_body(status: int, err_type: str, message: str) -> JSONResponse:
    """Anthropic's error envelope."""
    return JSONResponse(
        {"type": "error", "error": {"type": err_type, "message": message}}, status_code=status
    )


def _scrub(message: str, status: int) -> str:
    """SGLang's ``_scrub_error_message``: 5xx generic, 4xx without traceback lines, ≤ 500 chars."""
    if status >= 500:
        return "Internal server error"
    lines = [ln for ln in message.splitlines() if not ln.startswith("Traceback") and 'File "/' not in ln]
    cleaned = "\n".join(lines).strip()
    cleaned = cleaned[:500] + "…" if len(cleaned) > 500 else cleaned
    return cleaned or "Request failed"


def chat_error(status: int, raw: bytes) -> JSONResponse:
    """A chat route's error answer as Anthropic's (``_convert_openai_error_response``)."""
    err_type = ERROR_TYPES.get(status, "api_error")
    message = ""
    with contextlib.suppress(ValueError):
        payload = json.loads(raw)
        inner = payload.get("error", payload) if isinstance(payload, dict) else None
        if isinstance(inner, dict):
            message = str(inner.get("message") or "")
            upstream = inner.get("type")
            if status < 500 and isinstance(upstream, str) and upstream:
                err_type = upstream
            if message.startswith(_VALIDATION_PREFIXES) or upstream == "Bad Request":
                err_type = "invalid_request_error"
        elif isinstance(inner, str):
            message = inner
    return error_body(status, err_type, _scrub(message, status))


def prompt_tokens(body: dict[str, Any]) -> int:
    """The chat prompt's length, as the chat route counts it."""
    req = ChatCompletionRequest.model_validate(body)
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    return len(
        tok.encode(tok.render_chat(messages, tools, continue_final_message=req.continue_final_message))
    )


async def subrequest(
    app: FastAPI, request: Request, path: str, body: bytes
) -> tuple[int, AsyncIterator[bytes]]:
    """POST *body* to *path* of *app* in-process; return the status and the body chunks.

    The client's headers (its key) go along; once the body is read, the sub-request's
    receive is the client's, so a disconnect reaches the inner route.
    """
    headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"content-type", b"content-length")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {key: request.scope[key] for key in ("type", "asgi", "http_version", "scheme", "server", "client",
                                                "root_path") if key in request.scope}  # fmt: skip
    scope.update(method="POST", path=path, raw_path=path.encode(), query_string=b"", headers=headers)
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return pending.pop() if pending else await request.receive()

    queue: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.ensure_future(app(scope, receive, queue.put))

    async def next_message() -> Message | None:
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        task.result()  # the inner route failed: re-raise
        return None

    start = await next_message()
    if start is None or start.get("type") != "http.response.start":
        raise RuntimeError("the inner route sent no response")

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while (message := await next_message()) is not None:
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body"):
                    break
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return int(start["status"]), chunks()


def anthropic_message(chat: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as Anthropic's message (``_convert_response``, dumped without None)."""
    choice = chat["choices"][0]
    message = choice["message"]
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": message["reasoning_content"]})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        try:
            arguments = json.loads(call["function"]["arguments"])
        except (TypeError, ValueError):
            arguments = {}
        content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                        "input": arguments})  # fmt: skip
    usage = chat.get("usage") or {}
    counts = {
        "input_tokens": usage.get("prompt_tokens", 0),
        "output_tokens": usage.get("completion_tokens", 0),
    }
    return {
        "id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
        "content": content or [{"type": "text", "text": ""}], "model": chat["model"],
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "usage": counts,
    }  # fmt: skip


def _frame(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + dumps(event) + b"\n\n"


async def anthropic_stream(
    chunks: AsyncIterator[bytes], model: str, input_tokens: int
) -> AsyncIterator[bytes]:
    """A chat SSE stream as Anthropic's events (``_generate_anthropic_stream``)."""
    message_id = f"msg_{uuid.uuid4().hex}"
    index, open_type = 0, ""
    started = had_content = False
    finish: str | None = None
    output_tokens: int | None = None

    def start(tokens: int) -> list[bytes]:
        nonlocal started
        if started:
            return []
        started = True
        message = {"id": message_id, "type": "message", "role": "assistant", "content": [], "model": model,
                   "usage": {"input_tokens": tokens, "output_tokens": 0}}  # fmt: skip
        return [_frame({"type": "message_start", "message": message})]

    def close() -> list[bytes]:
        nonlocal index, open_type
        if not open_type:
            return []
        out = [_frame({"type": "content_block_stop", "index": index})]
        index, open_type = index + 1, ""
        return out

    def ensure(kind: str, block: dict[str, Any], force: bool = False) -> list[bytes]:
        nonlocal open_type
        out = close() if open_type and (force or open_type != kind) else []
        if not open_type:
            out.append(_frame({"type": "content_block_start", "index": index, "content_block": block}))
            open_type = kind
        return out

    def delta(payload: dict[str, Any]) -> bytes:
        return _frame({"type": "content_block_delta", "index": index, "delta": payload})

    def failed(err_type: str, message: str) -> list[bytes]:
        error = {"type": "error", "error": {"type": err_type, "message": message}}
        return [*start(0), *close(), _frame(error), _frame({"type": "message_stop"})]

    buffer = b""
    async for piece in chunks:
        buffer += piece
        while b"\n\n" in buffer:
            line, buffer = buffer.split(b"\n\n", 1)
            if not line.startswith(b"data: "):
                continue
            data = line[len(b"data: ") :].strip()
            out: list[bytes] = []
            if data == b"[DONE]":
                out += start(input_tokens)
                if not had_content and finish is None:
                    out += [_frame({"type": "error", "error": {"type": "api_error",
                                                               "message": "Backend produced no content"}}),
                            _frame({"type": "message_stop"})]  # fmt: skip
                else:
                    out += close()
                    stop = STOP_REASONS.get(finish or "stop", "end_turn")
                    usage = {"output_tokens": output_tokens or 0}
                    out += [_frame({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": usage}),
                            _frame({"type": "message_stop"})]  # fmt: skip
                yield b"".join(out)
                continue
            chunk = json.loads(data)
            if "error" in chunk and "choices" not in chunk:
                err = chunk["error"] if isinstance(chunk["error"], dict) else {}
                code = err.get("code")
                err_type = ERROR_TYPES.get(code, "api_error") if isinstance(code, int) else "api_error"
                yield b"".join(failed(err_type, str(err.get("message") or "Upstream error")))
                return
            if chunk.get("usage"):
                output_tokens = chunk["usage"].get("completion_tokens", 0)
            if not chunk.get("choices"):
                continue
            choice = chunk["choices"][0]
            finish = choice.get("finish_reason") or finish
            d = choice.get("delta") or {}
            out += start(input_tokens)  # continuous usage: every chunk carries the prompt's count
            if d.get("reasoning_content"):
                out += ensure("thinking", {"type": "thinking", "thinking": ""})
                out.append(delta({"type": "thinking_delta", "thinking": d["reasoning_content"]}))
                had_content = True
            for call in d.get("tool_calls") or []:
                function = call.get("function") or {}
                if function.get("name"):
                    block = {"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                             "name": function["name"], "input": {}}  # fmt: skip
                    out += ensure("tool_use", block, force=True)
                    had_content = True
                    if function.get("arguments"):
                        out.append(delta({"type": "input_json_delta", "partial_json": function["arguments"]}))
                elif function.get("arguments") and open_type == "tool_use":
                    out.append(delta({"type": "input_json_delta", "partial_json": function["arguments"]}))
                    had_content = True
            if d.get("content"):
                out += ensure("text", {"type": "text", "text": ""})
                out.append(delta({"type": "text_delta", "text": d["content"]}))
                had_content = True
            if out:
                yield b"".join(out)


def register(app: FastAPI, state: ServerState) -> None:
    """Add ``/v1/messages`` and ``/v1/messages/count_tokens`` to *app*."""
    parser = state.args.reasoning_parser  # the chat route it delegates to keeps the books

    async def parse(request: Request, model: type[CountTokensRequest]) -> CountTokensRequest | JSONResponse:
        try:
            raw = await json_body(request)
        except BadRequest as exc:
            loc = "header.content-type" if "content-type" in exc.message else "0"
            msg = (
                "Unsupported Media Type: Only 'application/json' is allowed"
                if loc != "0"
                else "JSON decode error"
            )
            return error_body(400, "invalid_request_error", f"{loc}: {msg}")
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            return error_body(400, "invalid_request_error", validation_digest([dict(e) for e in errors]))

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        req = await parse(request, MessagesRequest)
        if isinstance(req, JSONResponse):
            return req
        assert isinstance(req, MessagesRequest)
        try:
            body = chat_body(req, max_tokens=req.max_tokens, stream=bool(req.stream), reasoning_parser=parser)
            input_tokens = prompt_tokens(body)
        except (ValueError, ValidationError) as exc:
            return error_body(400, "invalid_request_error", str(exc))
        status, chunks = await subrequest(app, request, "/v1/chat/completions", dumps(body))
        if status != 200 or not req.stream:
            raw = b"".join([piece async for piece in chunks])
            if status != 200:
                return chat_error(status, raw)
            return JSONResponse(anthropic_message(json.loads(raw)))
        return StreamingResponse(
            anthropic_stream(chunks, req.model, input_tokens), media_type="text/event-stream"
        )

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        req = await parse(request, CountTokensRequest)
        if isinstance(req, JSONResponse):
            return req
        try:
            return JSONResponse({"input_tokens": prompt_tokens(chat_body(req, reasoning_parser=parser))})
        except (ValueError, ValidationError) as exc:
            return error_body(400, "invalid_request_error", str(exc))
