"""OpenAI's Responses API (``/v1/responses``) as SGLang 0.5.23 serves it (non-harmony models).

* ``POST /v1/responses``: ``input`` (a string or a list of items), ``instructions``,
  ``max_output_tokens`` (SGLang keeps 2 tokens of headroom: the budget is that minus 2),
  ``temperature`` (default 0.7 here, not chat's), ``top_p``, ``stop``, ``text.format``
  (``json_object`` / ``json_schema`` constrain the answer), function ``tools`` with
  ``tool_choice`` and ``parallel_tool_calls``, ``reasoning`` (effort ``none`` turns thinking
  off; ``summary`` mirrors the trace into ``summary``), ``include`` output logprobs.
  The body is a ``response`` object: ``reasoning`` / ``message`` / ``function_call`` output
  items, status ``completed``, ``incomplete`` (``max_output_tokens``) or ``failed``, the
  Responses usage shape. Streamed: typed events (``event:`` + ``data:``, numbered), no
  ``[DONE]``; a request error after the stream began is a ``response.failed`` event.
* Errors use the nested ``{"error": {message, type, param, code}}`` body; an unknown
  ``model`` is 404.
* ``--enable-response-store`` keeps responses for ``GET /v1/responses/{id}``,
  ``previous_response_id`` and ``background`` (``POST /v1/responses/{id}/cancel``). Without
  it those are 400 "Response store is disabled…", as in SGLang (off by default).

The "model" is the stand-in's (``_engine``): it echoes the last user message, calls the
tools the user names, answers a tool result. Unlike chat, it never calls an unnamed tool:
the Responses API has no ``seed``, and its default temperature would make such calls random.

A little over 500 lines: the plain and the streamed answer share one plan and must stay
twins; the item shapes and the request model are in ``_responses_items`` and
``_responses_protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._checks import check_context, check_sampling
from sglang_backend.testing._engine import (
    ConstraintError,
    Generation,
    PlannedCall,
    StreamSplitter,
    compile_constraint,
    generate_tokens,
    json_text,
    plan_call,
    reply_text,
    reply_variants,
    sample_generation,
    sampling_for,
    split_reasoning,
    think_text,
    tool_calls_text,
)
from sglang_backend.testing._lora import parse_model
from sglang_backend.testing._replies import BadRequest, JSONResponse, validated_body
from sglang_backend.testing._requests_registry import ABORT_FINISH
from sglang_backend.testing._responses_items import (
    EventWriter,
    function_call_item,
    message_item,
    new_item_id,
    output_logprobs,
    reasoning_item,
    response_body,
    usage_body,
)
from sglang_backend.testing._responses_protocol import (
    ResponsesRequest,
    chat_messages,
    drop_none,
)
from sglang_backend.testing._sampling import SamplingParams
from sglang_backend.testing._schema import SchemaError
from sglang_backend.testing._state import ServerState

__all__ = ["register"]

_DEFAULT_TEMPERATURE = 0.7  # ResponsesRequest._DEFAULT_SAMPLING_PARAMS
_STORE_DISABLED = (
    "Response store is disabled. Stateful Responses require --enable-response-store on a "
    "standalone server; response storage is unavailable in PD mode."
)


class _Refused(Exception):
    """A request SGLang answers with the nested error body.

    *stage* says where SGLang finds the problem: ``request`` (before any answer),
    ``engine`` (the tokenizer manager's ValueError: a streamed request gets
    ``response.failed`` without usage) or ``grammar`` (the scheduler aborts the request:
    streamed, the normal end with status ``failed`` and the usage so far).
    """

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 err_type: str = "invalid_request_error", stage: str = "request",
                 prompt_tokens: int = 0) -> None:  # fmt: skip
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.prompt_tokens = prompt_tokens
        self.response = error_body(message, param=param, status=status, err_type=err_type)


def error_body(message: str, *, param: str | None = None, status: int = 400,
               err_type: str = "invalid_request_error") -> JSONResponse:  # fmt: skip
    """serving_responses' ``create_error_response``."""
    error = {"message": message, "type": err_type, "param": param, "code": status}
    return JSONResponse({"error": error}, status_code=status)


@dataclass
class _Plan:
    """What the model will say to one request."""

    raw: str
    think: str
    thinking: bool
    calls: list[PlannedCall]
    calls_format: str | None  # "qwen" (parsed by the tool-call parser), "json" (required, no parser)
    prompt_tokens: int
    max_new: int | None
    sampling: SamplingParams
    grammar: str | None
    logprobs: bool
    top_logprobs: int
    stop: list[str] = field(default_factory=list)
    variants: tuple[str, ...] = ()

    @property
    def sampled(self) -> bool:
        return self.grammar is not None or not self.sampling.greedy or self.logprobs


def register(app: FastAPI, state: ServerState) -> None:
    """Add ``/v1/responses`` (create, retrieve, cancel) to *app*."""
    args = state.args
    delay = max(args.standin_token_delay, 0.0)
    store: dict[str, dict[str, Any]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    tasks: dict[str, asyncio.Task[None]] = {}

    def check(req: ResponsesRequest) -> list[dict[str, Any]]:
        """SGLang's create_responses checks, in its order; returns the stored history."""
        if any(tool.type == "shell" for tool in req.tools):
            raise _Refused("Shell tools are not supported by this model", param="tools")
        if not args.enable_response_store and req.previous_response_id is not None:
            raise _Refused(_STORE_DISABLED, param="previous_response_id")
        if not args.enable_response_store and req.background:
            raise _Refused(_STORE_DISABLED, param="background")
        if req.background and not req.store:
            raise _Refused("background=true requires store=true.", param="store")
        if req.model is not None:
            base, _adapter = parse_model(req.model)
            known = {args.served_model_name, *state.loras.loaded}
            if req.model not in known and base not in known:
                raise _Refused(f"The model '{req.model}' does not exist", param="model", status=404)
        if req.tool_choice == "required" and not any(t.type in ("function", "custom") for t in req.tools):
            raise _Refused(
                'tool_choice="required" requires at least one tool with type="function" or '
                'type="custom"; other built-in tool types cannot be forced.'
            )
        choice = req.effective_tool_choice()
        if isinstance(choice, dict) and not any(
            t.type in ("function", "custom") and t.name == choice["name"] for t in req.tools
        ):
            raise _Refused(f"Tool {choice['name']!r} is not declared in tools", param="tool_choice")
        if req.stream and req.wants_logprobs():
            raise _Refused("logprobs are not supported in streaming mode", param="logprobs")
        previous = req.previous_response_id
        if previous is None:
            return []
        if not previous.startswith("resp_"):
            raise invalid_id(previous)
        if previous not in store:
            raise not_found(previous)
        return histories.get(previous, [])

    def plan(req: ResponsesRequest, history: list[dict[str, Any]]) -> _Plan:
        try:
            messages = chat_messages(req.instructions, req.history(history))
        except ValueError as exc:
            raise _Refused(f"{exc} {exc.__cause__}") from exc
        tools = [t for t in req.tools if t.type == "function" and t.name]
        chat_tools = [
            {"type": "function", "function": drop_none({"name": t.name, "description": t.description,
                                                        "parameters": t.parameters})}
            for t in tools
        ]  # fmt: skip
        prompt = tok.render_chat(messages, chat_tools or None)
        prompt_tokens = len(tok.encode(prompt))
        choice = req.effective_tool_choice()
        forced = bool(tools) and (choice == "required" or isinstance(choice, dict))
        json_schema = req.json_schema()
        if forced and json_schema is not None:
            raise _Refused(
                "Cannot combine tool calls with constrained decoding "
                "(text.format / regex / ebnf / structural_tag / json_schema). Remove one."
            )
        max_new = None if req.max_output_tokens is None else req.max_output_tokens - 2
        temperature = _DEFAULT_TEMPERATURE if req.temperature is None else req.temperature
        try:
            check_sampling(temperature, req.top_p, max_new)
            check_context(prompt_tokens, max_new, args.context_length)
        except BadRequest as exc:
            raise _Refused(exc.message, stage="engine") from exc
        sampling = sampling_for(temperature, req.top_p, req.top_k, req.min_p, None, 1)
        last = messages[-1] if messages else {}
        user_text = next((tok.content_text(m.get("content")) for m in reversed(messages)
                          if m.get("role") == "user"), "")  # fmt: skip
        calls: list[PlannedCall] = []
        if tools and choice != "none":
            named = [t.name for t in tools if t.name and _mentions(user_text, t.name)]
            if not req.parallel_tool_calls:
                named = named[:1]
            if isinstance(choice, dict):
                chosen = [str(choice["name"])]
            elif choice == "required":
                chosen = named or [str(tools[0].name)]
            else:
                chosen = named if last.get("role") == "user" else []
            for name in chosen:
                tool = next(t for t in tools if t.name == name)
                try:
                    calls.append(plan_call(name, tool.parameters))
                except SchemaError as exc:
                    raise _Refused(f"Invalid tool parameters schema: {exc}") from exc
        calls_format = "qwen" if calls and args.tool_call_parser else ("json" if calls and forced else None)
        try:
            grammar = None if calls else compile_constraint(None, None, json_schema)
        except ConstraintError as exc:
            raise _Refused(str(exc), stage="grammar", prompt_tokens=prompt_tokens) from exc
        kwargs = req.chat_template_kwargs or {}
        thinking = bool(args.reasoning_parser) and not (
            kwargs.get("enable_thinking") is False or kwargs.get("thinking") is False
        )
        if calls_format == "json":
            body = json.dumps([{"name": c.name, "parameters": json.loads(c.arguments)} for c in calls])
        elif calls:
            body = tool_calls_text(calls)
        elif json_schema is not None:
            try:
                body = json_text(json.loads(json_schema))
            except SchemaError:
                body = ""
        elif last.get("role") == "tool":
            body = reply_text(user_text, tool_result=tok.content_text(last.get("content")))
        else:
            body = reply_text(user_text)
        think = think_text(user_text) if thinking else ""
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return _Plan(
            raw=think + body, think=think, thinking=thinking, calls=calls, calls_format=calls_format,
            prompt_tokens=prompt_tokens, max_new=max_new, sampling=sampling, grammar=grammar,
            logprobs=req.wants_logprobs(), top_logprobs=req.top_logprobs or 0, stop=stop,
            variants=tuple(think + v for v in reply_variants(body)) if not calls else (think + body,),
        )  # fmt: skip

    def decode(p: _Plan) -> Generation:
        limits: dict[str, Any] = {"max_new_tokens": p.max_new, "room": args.context_length - p.prompt_tokens,
                                  "stop": p.stop}  # fmt: skip
        if not p.sampled:
            return generate_tokens(p.raw, **limits)
        if p.grammar is not None:
            return sample_generation([p.raw[len(p.think):]], grammar=p.grammar, params=p.sampling, choice=0,
                                     top_logprobs=p.top_logprobs, prefix=p.think, **limits)  # fmt: skip
        return sample_generation(list(p.variants or (p.raw,)), grammar=None, params=p.sampling, choice=0,
                                 top_logprobs=p.top_logprobs, **limits)  # fmt: skip

    async def run_decode(p: _Plan) -> Generation:
        return await asyncio.to_thread(decode, p) if p.sampled else decode(p)

    def finish(req: ResponsesRequest, body: dict[str, Any], gen: Generation | None) -> dict[str, Any]:
        """Status, error and storage of a finished response."""
        if gen is not None and gen.finish_reason == "abort":
            body["status"] = "failed"
            body["error"] = {"code": "server_error", "message": ABORT_FINISH["message"]}
        if args.enable_response_store and req.store:
            stored = store.get(req.request_id)
            if stored is None or stored["status"] != "cancelled":
                store[req.request_id] = body
                prior = histories.get(req.previous_response_id or "", [])
                histories[req.request_id] = req.history(prior) + [drop_none(i) for i in body["output"]]
        return body

    def output_items(req: ResponsesRequest, p: _Plan, gen: Generation) -> list[dict[str, Any]]:
        reasoning, content = split_reasoning(gen.text, final=True) if p.thinking else ("", gen.text)
        calls: list[PlannedCall] = []
        complete = gen.finish_reason == "stop" and gen.matched_stop == tok.EOS_ID
        if p.calls_format is not None and complete:
            calls = p.calls
            content = "" if p.calls_format == "json" else content.split("<tool_call>", 1)[0].strip()
        summary = req.reasoning is not None and req.reasoning.summary is not None
        items: list[dict[str, Any]] = []
        if reasoning:
            items.append(reasoning_item(new_item_id("rs"), reasoning, summary=summary))
        if content:
            logprobs = output_logprobs(gen.logprobs) if p.logprobs else None
            phase = "commentary" if calls else "final_answer"
            items.append(message_item(new_item_id("msg"), content, phase=phase, logprobs=logprobs))
        items += [function_call_item(new_item_id("fc", 8), new_item_id("call", 24), c.name, c.arguments)
                  for c in calls]  # fmt: skip
        return items

    def status_of(gen: Generation) -> str:
        return {"length": "incomplete", "abort": "failed"}.get(gen.finish_reason, "completed")

    def usage_of(p: _Plan, gen: Generation) -> dict[str, Any]:
        return usage_body(p.prompt_tokens, gen.completion_tokens, _reasoning_tokens(gen, p.thinking))

    async def full(req: ResponsesRequest, p: _Plan, created: int) -> dict[str, Any]:
        state.enter(req.request_id, "responses")
        try:
            gen = await run_decode(p)
            if delay > 0 and state.registry.aborted(req.request_id) is False:
                if await state.registry.wait(req.request_id, delay * gen.completion_tokens):
                    gen = Generation(gen.token_ids, gen.pieces, "", "abort", None)
            elif state.registry.aborted(req.request_id):
                gen = Generation(gen.token_ids, gen.pieces, "", "abort", None)
            state.generation_tokens_total += gen.completion_tokens
            body = response_body(req, output_items(req, p, gen), status_of(gen), usage_of(p, gen), created)
            return finish(req, body, gen)
        finally:
            state.leave(req.request_id)

    async def stream(req: ResponsesRequest, p: _Plan, created: int) -> AsyncIterator[bytes]:
        summary = req.reasoning is not None and req.reasoning.summary is not None
        can_call = (
            any(t.type == "function" and t.name for t in req.tools) and req.effective_tool_choice() != "none"
        )
        writer = EventWriter(summary=summary, buffer_messages=can_call)
        state.enter(req.request_id, "responses")
        try:
            yield b"".join(
                writer.lifecycle("response.created", response_body(req, [], "in_progress", None, created))
            )
            yield b"".join(
                writer.lifecycle("response.in_progress", response_body(req, [], "in_progress", None, created))
            )
            gen = await run_decode(p)
            splitter = StreamSplitter(separate_reasoning=True, reasoning=p.thinking,
                                      calls=p.calls if p.calls_format == "qwen" else ())  # fmt: skip
            raw = ""
            finish_reason = gen.finish_reason
            for step, piece in enumerate(gen.pieces):
                if delay > 0:
                    await asyncio.sleep(delay)
                if state.registry.aborted(req.request_id):
                    finish_reason = "abort"
                    break
                raw += piece
                r_delta, c_delta, call_deltas = splitter.feed(raw, final=step == len(gen.pieces) - 1)
                out: list[bytes] = []
                if r_delta:
                    out += writer.reasoning(r_delta)
                if c_delta and p.calls_format != "json":
                    out += writer.text(c_delta)
                for _position, started, a_delta in call_deltas:
                    if started is not None:
                        out += writer.call_start(started)
                    if a_delta:
                        out += writer.call_arguments(a_delta)
                if out:
                    yield b"".join(out)
            complete = finish_reason == "stop" and gen.matched_stop == tok.EOS_ID
            tail: list[bytes] = []
            if p.calls_format == "json" and complete:
                for call in p.calls:
                    tail += writer.call_start(call.name) + writer.call_arguments(call.arguments)
            tail += writer.close()
            state.generation_tokens_total += gen.completion_tokens
            ended = Generation(gen.token_ids, gen.pieces, gen.text, finish_reason, gen.matched_stop)
            body = finish(
                req, response_body(req, writer.items, status_of(ended), usage_of(p, gen), created), ended
            )
            tail += writer.lifecycle(f"response.{body['status']}", body)
            yield b"".join(tail)
        finally:
            state.leave(req.request_id)

    async def failed_stream(req: ResponsesRequest, exc: _Refused, created: int) -> AsyncIterator[bytes]:
        """A request error found once streaming began: ``response.failed``."""
        writer = EventWriter(summary=False)
        yield b"".join(
            writer.lifecycle("response.created", response_body(req, [], "in_progress", None, created))
        )
        yield b"".join(
            writer.lifecycle("response.in_progress", response_body(req, [], "in_progress", None, created))
        )
        usage = usage_body(exc.prompt_tokens, 0, 0) if exc.stage == "grammar" else None
        failed = response_body(req, [], "failed", usage, created)
        failed["error"] = {"code": "server_error", "message": exc.message}
        yield b"".join(writer.lifecycle("response.failed", failed))

    async def background(req: ResponsesRequest, p: _Plan, created: int) -> None:
        store[req.request_id]["status"] = "in_progress"
        try:
            await full(req, p, created)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - SGLang marks the stored response failed on any error
            if store[req.request_id]["status"] not in ("completed", "cancelled"):
                store[req.request_id]["status"] = "failed"

    @app.post("/v1/responses")
    async def create(request: Request) -> Response:
        crash = state.count_request(request)
        try:
            req = await validated_body(request, ResponsesRequest)
        except BadRequest as exc:
            return error_body(exc.message, err_type="Bad Request")
        if crash:
            await state.crash_now()
        created = int(time.time())
        try:
            history = check(req)
            if req.model is None:
                raise _Refused(_model_missing())
            p = plan(req, history)
        except _Refused as exc:
            if req.stream and exc.stage != "request":
                return StreamingResponse(failed_stream(req, exc, created), media_type="text/event-stream")
            return exc.response
        state.prompt_tokens_total += p.prompt_tokens
        if req.stream:
            headers = {"Cache-Control": "no-cache", "Connection": "keep-alive"}
            return StreamingResponse(state.watch(req.request_id, stream(req, p, created), request),
                                     media_type="text/event-stream", headers=headers)  # fmt: skip
        if req.background and args.enable_response_store and req.store:
            queued = response_body(req, [], "queued", None, created)
            store[req.request_id] = queued
            histories[req.request_id] = req.history(histories.get(req.previous_response_id or "", []))
            task = asyncio.ensure_future(background(req, p, created))
            tasks[req.request_id] = task
            task.add_done_callback(functools.partial(_forget, tasks, req.request_id))
            return JSONResponse(dict(queued))
        return JSONResponse(await full(req, p, created))

    def stored(response_id: str) -> dict[str, Any]:
        if not args.enable_response_store:
            raise _Refused(_STORE_DISABLED, param="response_id")
        if not response_id.startswith("resp_"):
            raise invalid_id(response_id)
        body = store.get(response_id)
        if body is None:
            raise not_found(response_id)
        return body

    @app.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str) -> Response:
        try:
            return JSONResponse(stored(response_id))
        except _Refused as exc:
            return exc.response

    @app.post("/v1/responses/{response_id}/cancel")
    async def cancel(response_id: str) -> Response:
        try:
            body = stored(response_id)
        except _Refused as exc:
            return exc.response
        if body["status"] not in ("queued", "in_progress"):
            return JSONResponse(body)
        body["status"] = "cancelled"
        state.registry.abort(response_id)
        task = tasks.get(response_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return JSONResponse(body)


def invalid_id(response_id: str) -> _Refused:
    """A response id without the ``resp`` prefix."""
    return _Refused(f"Invalid 'response_id': '{response_id}'. Expected an ID that begins with 'resp'.",
                    param="response_id")  # fmt: skip


def not_found(response_id: str) -> _Refused:
    """An id the store does not hold."""
    return _Refused(f"Response with id '{response_id}' not found.", param="response_id", status=404)


def _model_missing() -> str:
    """Building ``ResponsesResponse(model=None)`` fails: pydantic's text is SGLang's 400."""
    from pydantic import BaseModel

    class ResponsesResponse(BaseModel):
        model: str

    try:
        ResponsesResponse.model_validate({"model": None})
    except ValidationError as exc:
        return str(exc)
    return "model is required"  # pragma: no cover - the validation above always fails


def _forget(tasks: dict[str, asyncio.Task[None]], rid: str, _task: asyncio.Task[None]) -> None:
    tasks.pop(rid, None)


def _mentions(text: str, name: str) -> bool:
    lowered = text.lower()
    return name.lower() in lowered or name.lower().replace("_", " ") in lowered


def _reasoning_tokens(gen: Generation, thinking: bool) -> int:
    """Tokens spent in the ``<think>`` section."""
    if not thinking:
        return 0
    raw = ""
    for count, piece in enumerate(gen.pieces, start=1):
        raw += piece
        if raw.rstrip().endswith("</think>"):
            return count
    return len(gen.token_ids)
