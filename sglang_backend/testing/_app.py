"""The stand-in's HTTP application (FastAPI): SGLang's native and OpenAI routes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from sglang_backend.testing import (
    _admin,
    _embeddings,
    _generate,
    _lora,
    _messages_api,
    _responses_api,
    _scoring,
)
from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._auth import AuthMiddleware
from sglang_backend.testing._checks import check_context, check_sampling
from sglang_backend.testing._engine import (
    ConstraintError,
    Generation,
    PlannedCall,
    StreamSplitter,
    compile_constraint,
    echo_source,
    generate_tokens,
    json_text,
    plan_call,
    reply_text,
    reply_variants,
    sample_generation,
    sampling_for,
    split_reasoning,
    think_text,
)
from sglang_backend.testing._protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    ToolChoiceNamed,
    validation_message,
)
from sglang_backend.testing._replies import DONE as _DONE
from sglang_backend.testing._replies import BadRequest as _BadRequest
from sglang_backend.testing._replies import JSONResponse, dumps, json_body, openai_error
from sglang_backend.testing._replies import sse as _sse
from sglang_backend.testing._sampling import SamplingParams, chat_logprobs, choice_rng, completion_logprobs
from sglang_backend.testing._schema import SchemaError, tool_schema_problem
from sglang_backend.testing._state import WARMUP_HEADER, ServerState
from sglang_backend.testing._structural_tag import structural_tag_target
from sglang_backend.testing._tool_formats import Rendered, call_id, render

__all__ = ["WARMUP_HEADER", "ServerState", "build_app", "dumps"]

logger = logging.getLogger("sglang.srt.entrypoints.http_server")

BodyT = TypeVar("BodyT", bound=BaseModel)


class _Reply(Exception):
    """Ends a route early with a ready response (rendered by the app's handler)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


# --------------------------------------------------------------------------- helpers


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


def reasoning_token_count(gen: Generation, thinking: bool) -> int:
    """Tokens spent in the ``<think>`` section."""
    if not thinking:
        return 0
    raw = ""
    for count, piece in enumerate(gen.pieces, start=1):
        raw += piece
        if raw.rstrip().endswith("</think>"):
            return count
    return len(gen.token_ids)


@dataclass
class ChatPlan:
    """What the model will say to one chat request."""

    raw: str
    thinking: bool
    calls: list[PlannedCall]
    parse_calls: bool
    prompt_tokens: int
    max_new: int | None
    sampling: SamplingParams
    grammar: str | None = None  # compiled constraint on the answer (after any thinking)
    variants: tuple[str, ...] = ()  # other answers the model may sample (free text only)
    top_logprobs: int = 0
    logprobs: bool = False
    think: str = ""  # the thinking section that starts raw (unconstrained)
    rendered: Rendered | None = None  # the calls in the parser's wire format (raw holds it)

    def body_offset(self, separate_reasoning: bool) -> int:
        """Where the answer (the tool calls) starts in the content the parser sees."""
        return len(self.think) if self.thinking and not separate_reasoning else 0

    @property
    def sampled(self) -> bool:
        """Whether decoding goes through the grammar engine (else the fixed reply)."""
        return self.grammar is not None or not self.sampling.greedy or self.logprobs


# --------------------------------------------------------------------------- app


def build_app(state: ServerState) -> FastAPI:
    """Create the FastAPI application serving *state*."""
    args = state.args
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    async def parse_body(request: Request, model: type[BodyT], *, crash: bool = False) -> BodyT:
        """The request body as ``model``, or SGLang's 400 (after the crash, if this request
        is the one that must crash the server)."""
        try:
            return model.model_validate(await json_body(request))
        except _BadRequest as exc:
            error = openai_error(exc.message, exc.err_type)
        except ValidationError as exc:
            error = openai_error(validation_message(exc), "Bad Request")
        if crash:
            await state.crash_now()
        raise _Reply(error)

    async def reply(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Reply)
        return exc.response

    app.add_exception_handler(_Reply, reply)
    app.state.standin = state
    delay = max(args.standin_token_delay, 0.0)

    async def pace(tokens: int) -> None:
        if delay > 0 and tokens > 0:
            await asyncio.sleep(delay * tokens)

    # ---------------------------------------------------------------- health & info

    @app.get("/health")
    @app.get("/health_generate")
    async def health() -> Response:
        if state.status != "Up":
            return Response(status_code=503)
        if state.health_generation:
            await asyncio.sleep(1.0)
            if state.status != "Up":
                return Response(status_code=503)
        return Response(status_code=200)

    @app.get("/ready")
    @app.get("/ping")
    async def ready() -> Response:
        # 503 also while generation is paused (0.5.23)
        up = state.status == "Up" and state.unpaused.is_set()
        return Response(status_code=200 if up else 503)

    @app.get("/")
    async def root() -> JSONResponse:
        return JSONResponse("SGLang is running")

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        cards = [state.model_card(), *state.loras.cards(args.served_model_name, state.created)]
        return JSONResponse({"object": "list", "data": cards})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> JSONResponse:
        if model_id != args.served_model_name:
            return JSONResponse(
                {
                    "error": {
                        "message": f"The model '{model_id}' does not exist",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "model_not_found",
                    }
                },
                status_code=404,
            )
        return JSONResponse(state.model_card())

    @app.get("/model_info")
    async def model_info() -> JSONResponse:
        return JSONResponse(state.model_info())

    @app.get("/get_model_info")
    async def get_model_info() -> JSONResponse:
        logger.warning("Endpoint '/get_model_info' is deprecated; use '/model_info' instead.")
        return JSONResponse(state.model_info())

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info() -> JSONResponse:
        return JSONResponse(state.server_info())

    if args.enable_metrics:

        @app.get("/metrics")
        async def metrics() -> PlainTextResponse:
            label = f'model_name="{args.served_model_name}"'
            lines = [
                "# HELP sglang:prompt_tokens_total Number of prefill tokens processed.",
                "# TYPE sglang:prompt_tokens_total counter",
                f"sglang:prompt_tokens_total{{{label}}} {float(state.prompt_tokens_total)}",
                "# HELP sglang:generation_tokens_total Number of generation tokens processed.",
                "# TYPE sglang:generation_tokens_total counter",
                f"sglang:generation_tokens_total{{{label}}} {float(state.generation_tokens_total)}",
                "# HELP sglang:num_requests_total Number of requests processed.",
                "# TYPE sglang:num_requests_total counter",
                f"sglang:num_requests_total{{{label}}} {float(state.requests_total)}",
                "# HELP sglang:num_running_reqs The number of running requests.",
                "# TYPE sglang:num_running_reqs gauge",
                f"sglang:num_running_reqs{{{label}}} {float(state.inflight)}",
            ]
            return PlainTextResponse(
                "\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8"
            )

    # ---------------------------------------------------------------- tokenizer

    async def tokenize(request: Request) -> Response:
        req = await parse_body(request, TokenizeRequest)
        ctx = args.context_length
        if req.messages is not None:
            prompt = tok.render_chat([m.model_dump(exclude_none=True) for m in req.messages])
            ids = tok.encode(prompt)
            return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": ctx})
        if isinstance(req.prompt, list):
            lists = [tok.encode(p) for p in req.prompt]
            return JSONResponse({"tokens": lists, "count": [len(x) for x in lists], "max_model_len": ctx})
        ids = tok.encode(req.prompt or "")
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": ctx})

    async def detokenize(request: Request) -> Response:
        req = await parse_body(request, DetokenizeRequest)
        skip = req.skip_special_tokens
        tokens: list[Any] = list(req.tokens)
        if tokens and isinstance(tokens[0], list):
            texts = [tok.decode(ids, skip_special_tokens=skip) for ids in tokens]
            return JSONResponse({"text": texts})
        return JSONResponse({"text": tok.decode(tokens, skip_special_tokens=skip)})

    for path in ("/tokenize", "/v1/tokenize"):
        app.add_api_route(path, tokenize, methods=["POST"])
    for path in ("/detokenize", "/v1/detokenize"):
        app.add_api_route(path, detokenize, methods=["POST"])

    # ---------------------------------------------------------------- chat

    def plan_chat(req: ChatCompletionRequest) -> ChatPlan:
        problem = req.check()
        if problem is None and req.tools:
            problem = tool_schema_problem(
                [t.function.parameters for t in req.tools], forced=req.tool_choice == "required"
            )
        if problem is not None:
            raise _BadRequest(problem)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        prompt = tok.render_chat(messages, tools, continue_final_message=req.continue_final_message)
        prompt_tokens = len(tok.encode(prompt))
        limit = req.completion_limit()
        check_sampling(req.temperature, req.top_p, limit)
        if limit is not None and limit > args.context_length:
            # serving_chat's wording names max_completion_tokens for max_tokens too
            raise _BadRequest(
                f"max_completion_tokens is too large: {limit}."
                f"This model supports at most {args.context_length} completion tokens."
            )
        check_context(prompt_tokens, limit, args.context_length)
        forced = req.tool_choice == "required" or isinstance(req.tool_choice, ToolChoiceNamed)
        if forced and req.response_format is not None and req.response_format.type != "text":
            raise _BadRequest(
                "Tool choice 'required' or a specific tool cannot be combined with response_format."
            )
        last = req.messages[-1]
        user_text = ""
        for message in reversed(req.messages):
            if message.role == "user":
                user_text = tok.content_text(message.content)
                break
        sampling = sampling_for(req.temperature, req.top_p, req.top_k, req.min_p, req.seed, req.n)
        calls: list[PlannedCall] = []
        if req.tools and req.tool_choice != "none":
            chosen: list[str] = []
            mentioned = _mentioned_tools(req, user_text)
            if not req.parallel_tool_calls:
                mentioned = mentioned[:1]
            if isinstance(req.tool_choice, ToolChoiceNamed):
                chosen = [str(req.tool_choice.function.name)]
            elif req.tool_choice == "required":
                chosen = mentioned or [req.tools[0].function.name]
            elif last.role == "user":
                chosen = mentioned or _unprompted_tool(req, sampling)
            for name in chosen:
                tool = next(t for t in req.tools if t.function.name == name)
                try:
                    calls.append(plan_call(name, tool.function.parameters))
                except SchemaError as exc:
                    raise _BadRequest(f"Invalid tool parameters schema: {exc}") from exc
        json_schema: str | None = None
        structural_tag = (
            None if calls or req.response_format is None else req.response_format.structural_tag()
        )
        if not calls and req.response_format is not None and req.response_format.type == "json_object":
            json_schema = '{"type": "object"}'
        elif not calls and req.response_format is not None and req.response_format.type == "json_schema":
            fmt = req.response_format.json_schema
            json_schema = json.dumps(fmt.schema_ if fmt and fmt.schema_ is not None else {})
        try:
            # a tool call's own format wins over the answer's constraint
            grammar = None if calls else compile_constraint(req.regex, req.ebnf, json_schema, structural_tag)
        except ConstraintError as exc:
            raise _BadRequest(str(exc)) from exc
        kwargs = req.chat_template_kwargs or {}
        thinking = bool(args.reasoning_parser) and req.reasoning_effort != "none"
        if kwargs.get("enable_thinking") is False or kwargs.get("thinking") is False:
            thinking = False
        rendered: Rendered | None = None
        if calls:
            history = sum(len(m.tool_calls or []) for m in req.messages if m.role == "assistant")
            for position, call in enumerate(calls):
                call.call_id = call_id(args.tool_call_parser, call.name, position, history, call.call_id)
            rendered = render(args.tool_call_parser, calls, history)
            body = rendered.text
        elif req.response_format is not None and req.response_format.type == "json_schema":
            schema = req.response_format.json_schema.schema_ if req.response_format.json_schema else None
            try:
                body = json_text(schema or {})
            except SchemaError:
                body = ""  # no example to aim at: the grammar alone shapes the answer
        elif req.response_format is not None and req.response_format.type == "json_object":
            body = json_text(None)
        elif structural_tag is not None:
            body = structural_tag_target(structural_tag)
        elif last.role in {"tool", "function"}:
            body = reply_text(user_text, tool_result=tok.content_text(last.content))
        else:
            body = reply_text(user_text)
        think = think_text(user_text) if thinking else ""
        return ChatPlan(
            raw=think + body,
            thinking=thinking,
            calls=calls,
            parse_calls=bool(calls) and bool(args.tool_call_parser),
            prompt_tokens=prompt_tokens,
            max_new=limit,
            sampling=sampling,
            grammar=grammar,
            variants=tuple(think + v for v in reply_variants(body)) if not calls else (think + body,),
            top_logprobs=req.top_logprobs or 0,
            logprobs=req.logprobs,
            think=think,
            rendered=rendered,
        )

    def decode_chat(req: ChatCompletionRequest, plan: ChatPlan, index: int = 0) -> Generation:
        limits: dict[str, Any] = {
            "max_new_tokens": plan.max_new,
            "room": args.context_length - plan.prompt_tokens,
            "stop": req.stop_list(),
            "stop_token_ids": req.stop_token_ids or (),
            "ignore_eos": req.ignore_eos,
            "min_new_tokens": req.min_tokens,
            "no_stop_trim": req.no_stop_trim,
            "stop_regex": _stop_regex(req),
        }
        if not plan.sampled:
            return generate_tokens(plan.raw, **limits)
        if plan.grammar is not None:
            return sample_generation(
                [plan.raw[len(plan.think) :]], grammar=plan.grammar, params=plan.sampling, choice=index,
                top_logprobs=plan.top_logprobs, prefix=plan.think, **limits,
            )  # fmt: skip
        return sample_generation(
            plan.variants or [plan.raw], grammar=None, params=plan.sampling, choice=index,
            top_logprobs=plan.top_logprobs, **limits,
        )  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        crash = state.count_request(request)
        req = await parse_body(request, ChatCompletionRequest, crash=crash)
        if crash and not req.stream:
            await state.crash_now()
        try:
            state.loras.check(req.model, getattr(req, "lora_path", None))  # "base:adapter"
            plan = plan_chat(req)
        except _BadRequest as exc:
            if crash:
                await state.crash_now()
            return openai_error(exc.message, exc.err_type)
        state.prompt_tokens_total += plan.prompt_tokens
        rid = req.rid or uuid.uuid4().hex
        if req.stream:
            return StreamingResponse(
                state.watch(rid, stream_chat(req, plan, rid, crash), request), media_type="text/event-stream"
            )
        state.enter(rid, "chat", request)
        try:
            choices = []
            completion_tokens = 0
            reasoning_tokens = 0
            for index in range(req.n):
                gen = await off_loop(plan.sampled, decode_chat, req, plan, index)
                await pace(gen.completion_tokens)
                completion_tokens += gen.completion_tokens
                reasoning_tokens += reasoning_token_count(gen, plan.thinking)
                choices.append(chat_choice(req, plan, gen, index))
            state.generation_tokens_total += completion_tokens
            body = {
                "id": rid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.model,
                "choices": choices,
                "usage": usage_body(
                    plan.prompt_tokens, completion_tokens, reasoning_tokens, args.enable_cache_report
                ),
                "metadata": {"weight_version": "default"},
            }
            return JSONResponse(body)
        finally:
            state.leave(rid)

    def chat_choice(
        req: ChatCompletionRequest, plan: ChatPlan, gen: Generation, index: int
    ) -> dict[str, Any]:
        reasoning: str | None = None
        content = gen.text
        if plan.thinking and req.separate_reasoning:
            reasoning, content = split_reasoning(gen.text, final=True)
            reasoning = reasoning or None
        message: dict[str, Any] = {"role": "assistant", "content": content, "reasoning_content": reasoning}
        finish: str = gen.finish_reason
        matched: int | str | None = gen.matched_stop
        if plan.parse_calls and plan.calls and gen.finish_reason == "stop" and gen.matched_stop == tok.EOS_ID:
            message["content"] = content[: plan.body_offset(req.separate_reasoning)].strip()
            wire = plan.rendered.arguments if plan.rendered else [c.arguments for c in plan.calls]
            skipped = plan.rendered.dropped if plan.rendered else frozenset()
            kept = [(c, a) for i, (c, a) in enumerate(zip(plan.calls, wire, strict=True)) if i not in skipped]
            if kept:  # else serving_chat's "no complete call parsed": no tool_calls, finish unchanged
                message["tool_calls"] = [
                    {
                        "id": call.call_id,
                        "index": position,
                        "type": "function",
                        "function": {"name": call.name, "arguments": arguments},
                    }
                    for position, (call, arguments) in enumerate(kept)
                ]
                finish, matched = "tool_calls", None
        return {
            "index": index,
            "message": message,
            "logprobs": chat_logprobs(gen.logprobs, plan.top_logprobs) if plan.logprobs else None,
            "finish_reason": finish,
            "matched_stop": matched,
        }

    async def stream_chat(
        req: ChatCompletionRequest, plan: ChatPlan, rid: str, crash: bool
    ) -> AsyncIterator[bytes]:
        state.enter(rid, "chat")
        try:
            created = int(time.time())
            head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model}
            completion_tokens = 0
            reasoning_tokens = 0
            include_usage = args.stream_response_default_include_usage or bool(
                req.stream_options and req.stream_options.include_usage
            )
            for index in range(req.n):
                gen = await off_loop(plan.sampled, decode_chat, req, plan, index)
                completion_tokens += gen.completion_tokens
                reasoning_tokens += reasoning_token_count(gen, plan.thinking)

                def chunk(
                    delta: dict[str, Any],
                    finish: str | None = None,
                    matched: int | str | None = None,
                    choice: int = index,
                    logprobs: dict[str, Any] | None = None,
                ) -> bytes:
                    return _sse(
                        {
                            **head,
                            "choices": [
                                {
                                    "index": choice,
                                    "delta": delta,
                                    "logprobs": logprobs,
                                    "finish_reason": finish,
                                    "matched_stop": matched,
                                }
                            ],
                        }
                    )

                yield chunk({"reasoning_content": None, "role": "assistant", "content": ""})
                splitter = StreamSplitter(
                    separate_reasoning=req.separate_reasoning,
                    reasoning=plan.thinking,
                    calls=plan.calls if plan.parse_calls else (),
                    rendered=plan.rendered,
                    body_offset=plan.body_offset(req.separate_reasoning),
                )
                together = plan.rendered is not None and plan.rendered.with_name
                raw = ""
                sent = 0
                aborted = False
                for step, piece in enumerate(gen.pieces):
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if state.registry.aborted(rid):
                        aborted = True
                        break
                    raw += piece
                    final = step == len(gen.pieces) - 1
                    r_delta, c_delta, call_deltas = splitter.feed(raw, final=final)
                    out: list[bytes] = []
                    if r_delta:
                        out.append(chunk({"reasoning_content": r_delta}))
                    if c_delta:
                        piece_lp = (
                            chat_logprobs(gen.logprobs[step : step + 1], plan.top_logprobs)
                            if plan.logprobs
                            else None
                        )
                        out.append(chunk({"reasoning_content": None, "content": c_delta}, logprobs=piece_lp))
                    for position, started, a_delta in call_deltas:
                        if started is not None:
                            call_delta = {
                                "id": plan.calls[position].call_id,
                                "index": position,
                                "type": "function",
                                "function": {"name": started, "arguments": a_delta if together else ""},
                            }
                            out.append(chunk({"reasoning_content": None, "tool_calls": [call_delta]}))
                        if a_delta and not (together and started is not None):
                            frag = {
                                "id": None,
                                "index": position,
                                "type": "function",
                                "function": {"name": None, "arguments": a_delta},
                            }
                            out.append(chunk({"reasoning_content": None, "tool_calls": [frag]}))
                    for item in out:
                        yield item
                        sent += 1
                        if crash and sent >= 2:
                            await asyncio.sleep(0.05)
                            await state.crash_now()
                if crash:
                    await asyncio.sleep(0.05)
                    await state.crash_now()
                if aborted:
                    yield chunk({"reasoning_content": None}, "abort", None)
                    continue
                finish: str = gen.finish_reason
                matched = gen.matched_stop
                if plan.parse_calls and splitter.call_started and gen.matched_stop == tok.EOS_ID:
                    finish, matched = "tool_calls", None
                yield chunk({"reasoning_content": None}, finish, matched)
            state.generation_tokens_total += completion_tokens
            if include_usage:
                usage = usage_body(
                    plan.prompt_tokens, completion_tokens, reasoning_tokens, args.enable_cache_report
                )
                yield _sse({**head, "choices": [], "usage": usage})
            yield _DONE
        finally:
            state.leave(rid)

    # ---------------------------------------------------------------- completions

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        crash = state.count_request(request)
        req = await parse_body(request, CompletionRequest, crash=crash)
        if crash and not req.stream:
            await state.crash_now()
        prompts = _prompt_texts(req.prompt)
        try:
            state.loras.check(req.model, getattr(req, "lora_path", None))  # "base:adapter"
            check_sampling(req.temperature, req.top_p, req.max_tokens)
            sampling = sampling_for(req.temperature, req.top_p, req.top_k, req.min_p, req.seed, req.n)
            try:
                grammar = compile_constraint(req.regex, req.ebnf, req.json_schema)
            except ConstraintError as exc:
                raise _BadRequest(str(exc)) from exc
            sampled = grammar is not None or not sampling.greedy or req.logprobs is not None
            plans: list[tuple[str, int, str]] = []
            for prompt in prompts:
                prompt_tokens = len(tok.encode(prompt))
                check_context(prompt_tokens, req.max_tokens, args.context_length)
                if req.json_schema is not None:
                    try:
                        candidate = json_text(json.loads(req.json_schema))
                    except (ValueError, SchemaError):
                        candidate = ""  # the grammar alone shapes the answer
                elif grammar is not None:
                    candidate = reply_text(echo_source(prompt))
                else:
                    candidate = " " + reply_text(echo_source(prompt))
                plans.append((prompt, prompt_tokens, candidate))
        except _BadRequest as exc:
            if crash:
                await state.crash_now()
            return openai_error(exc.message, exc.err_type)
        rid = req.rid or uuid.uuid4().hex
        total_prompt = sum(p[1] for p in plans)
        state.prompt_tokens_total += total_prompt

        def decode(prompt_tokens: int, candidate: str, choice: int) -> Generation:
            limits: dict[str, Any] = {
                "max_new_tokens": req.max_tokens,
                "room": args.context_length - prompt_tokens,
                "stop": req.stop_list(),
                "stop_token_ids": req.stop_token_ids or (),
                "ignore_eos": req.ignore_eos,
                "min_new_tokens": req.min_tokens,
                "no_stop_trim": req.no_stop_trim,
                "stop_regex": _stop_regex(req),
            }
            if not sampled:
                return generate_tokens(candidate, **limits)
            targets = [candidate] if grammar is not None else list(reply_variants(candidate))
            return sample_generation(
                targets, grammar=grammar, params=sampling, choice=choice,
                top_logprobs=req.logprobs or 0, **limits,
            )  # fmt: skip

        def choice_logprobs(
            prompt: str, gen: Generation, first: int = 0, last: int | None = None
        ) -> dict[str, Any] | None:
            if req.logprobs is None:
                return None
            start = len(prompt) if req.echo else 0
            offset = start + sum(len(e.text) for e in gen.logprobs[:first])
            return completion_logprobs(gen.logprobs[first:last], req.logprobs, offset)

        if req.stream:
            return StreamingResponse(
                state.watch(
                    rid, stream_completions(req, plans, rid, crash, decode, choice_logprobs, sampled), request
                ),
                media_type="text/event-stream",
            )
        state.enter(rid, "completion", request)
        try:
            choices = []
            completion_tokens = 0
            index = 0
            for prompt, prompt_tokens, candidate in plans:
                for _ in range(req.n):
                    gen = await off_loop(sampled, decode, prompt_tokens, candidate, index)
                    await pace(gen.completion_tokens)
                    completion_tokens += gen.completion_tokens
                    text = (prompt + gen.text) if req.echo else gen.text
                    choices.append(
                        {
                            "index": index,
                            "text": text,
                            "logprobs": choice_logprobs(prompt, gen),
                            "finish_reason": gen.finish_reason,
                            "matched_stop": gen.matched_stop,
                        }
                    )
                    index += 1
            state.generation_tokens_total += completion_tokens
            return JSONResponse(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": req.model,
                    "choices": choices,
                    "usage": usage_body(total_prompt, completion_tokens, 0, args.enable_cache_report),
                    "metadata": {"weight_version": "default"},
                }
            )
        finally:
            state.leave(rid)

    async def stream_completions(
        req: CompletionRequest,
        plans: Sequence[tuple[str, int, str]],
        rid: str,
        crash: bool,
        decode: Callable[[int, str, int], Generation],
        choice_logprobs: Callable[[str, Generation, int, int | None], dict[str, Any] | None],
        sampled: bool,
    ) -> AsyncIterator[bytes]:
        state.enter(rid, "completion")
        try:
            head = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": req.model}
            completion_tokens = 0
            sent = 0
            index = 0
            for prompt, prompt_tokens, candidate in plans:
                for _ in range(req.n):
                    gen = await off_loop(sampled, decode, prompt_tokens, candidate, index)
                    completion_tokens += gen.completion_tokens
                    last = len(gen.pieces) - 1
                    for step, piece in enumerate(gen.pieces):
                        if delay > 0:
                            await asyncio.sleep(delay)
                        text = (prompt + piece) if req.echo and step == 0 else piece
                        finish = gen.finish_reason if step == last else None
                        matched = gen.matched_stop if step == last else None
                        if state.registry.aborted(rid):
                            text, finish, matched = "", "abort", None
                        if not text and finish is None:
                            continue
                        piece_lp = (
                            choice_logprobs(prompt, gen, step, step + 1) if step < len(gen.logprobs) else None
                        )
                        choice = {
                            "index": index,
                            "text": text,
                            "logprobs": piece_lp,
                            "finish_reason": finish,
                            "matched_stop": matched,
                        }
                        yield _sse({**head, "choices": [choice], "usage": None})
                        if finish == "abort":
                            break
                        sent += 1
                        if crash and sent >= 2:
                            await asyncio.sleep(0.05)
                            await state.crash_now()
                    index += 1
            if crash:
                await state.crash_now()
            state.generation_tokens_total += completion_tokens
            include_usage = args.stream_response_default_include_usage or bool(
                req.stream_options and req.stream_options.include_usage
            )
            if include_usage:
                total_prompt = sum(p[1] for p in plans)
                usage = usage_body(total_prompt, completion_tokens, 0, args.enable_cache_report)
                yield _sse({**head, "choices": [], "usage": usage})
            yield _DONE
        finally:
            state.leave(rid)

    # ---------------------------------------------------------------- by concern

    _generate.register(app, state)
    _responses_api.register(app, state)
    _messages_api.register(app, state)
    _embeddings.register(app, state)
    _scoring.register(app, state)
    _admin.register(app, state)
    _lora.register(app, state.loras)

    app.add_middleware(AuthMiddleware, api_key=args.api_key, admin_api_key=args.admin_api_key)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    return app


async def off_loop(sampled: bool, decode: Callable[..., Generation], *args: Any) -> Generation:
    """Run a decode; the grammar engine's (tens of ms) in a worker thread, off the event loop."""
    if not sampled:
        return decode(*args)
    return await asyncio.to_thread(decode, *args)


def _mentioned_tools(req: ChatCompletionRequest, text: str) -> list[str]:
    """The tools the user mentioned (``get_weather`` or ``get weather``), in tools order."""
    lowered = text.lower()
    return [
        tool.function.name
        for tool in req.tools or []
        if tool.function.name.lower() in lowered or tool.function.name.lower().replace("_", " ") in lowered
    ]


_UNPROMPTED_CALL_CHANCE = 0.25


def _unprompted_tool(req: ChatCompletionRequest, sampling: SamplingParams) -> list[str]:
    """Under ``auto`` a sampling model sometimes calls a tool nobody named (seeded; never greedy)."""
    if sampling.greedy or not req.tools:
        return []
    rng = choice_rng(sampling.seed, -1)
    if rng.random() >= _UNPROMPTED_CALL_CHANCE:
        return []
    return [req.tools[rng.randrange(len(req.tools))].function.name]


def _stop_regex(req: ChatCompletionRequest | CompletionRequest) -> list[str]:
    """``stop_regex`` as a list."""
    value = req.stop_regex
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _prompt_texts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    """Normalize a completions ``prompt`` into texts."""
    if isinstance(prompt, str):
        return [prompt]
    items: list[Any] = list(prompt)
    if items and isinstance(items[0], str):
        return [str(p) for p in items]
    if items and isinstance(items[0], int):
        return [tok.decode(items)]
    return [tok.decode(ids) for ids in items]


def env_health_generation() -> bool:
    """Whether ``/health`` runs a (simulated) generation (``SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION``)."""
    value = os.environ.get("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "true").strip().lower()
    return value not in {"0", "false", "no", "off"}
