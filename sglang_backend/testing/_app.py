"""The stand-in's HTTP application (FastAPI): SGLang's native and OpenAI routes."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from sglang_backend.testing import STANDIN_VERSION
from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._cli import StandinArgs
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
    tool_calls_text,
)
from sglang_backend.testing._events import EventLog
from sglang_backend.testing._protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    ToolChoiceNamed,
    validation_message,
)
from sglang_backend.testing._sampling import SamplingParams, chat_logprobs, choice_rng, completion_logprobs
from sglang_backend.testing._schema import SchemaError

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        """Serialize *obj* to JSON bytes (orjson)."""
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - orjson is optional

    def dumps(obj: Any) -> bytes:
        """Serialize *obj* to JSON bytes (stdlib)."""
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


__all__ = ["WARMUP_HEADER", "ServerState", "build_app", "dumps"]

logger = logging.getLogger("sglang.srt.entrypoints.http_server")

Status = Literal["Starting", "Up", "Draining", "UnHealthy"]
WARMUP_HEADER = "x-standin-warmup"
_SAMPLING_KEYS = frozenset(
    {
        "max_new_tokens", "temperature", "top_p", "top_k", "min_p", "frequency_penalty",
        "presence_penalty", "repetition_penalty", "min_new_tokens", "stop", "stop_token_ids",
        "stop_regex", "n", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
        "no_stop_trim", "json_schema", "regex", "ebnf", "structural_tag", "logit_bias",
        "sampling_seed", "custom_params", "thinking_budget",
    }
)  # fmt: skip


class JSONResponse(Response):
    """A JSON response rendered with orjson when available."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Render *content* as JSON bytes."""
        return dumps(content)


class _BadRequest(Exception):
    """A request rejected before generation (rendered by the route's error style)."""

    def __init__(self, message: str, err_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.message = message
        self.err_type = err_type


BodyT = TypeVar("BodyT", bound=BaseModel)


class _Reply(Exception):
    """Ends a route early with a ready response (rendered by the app's handler)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


@dataclass
class ServerState:
    """Mutable server state shared by routes and the launcher."""

    args: StandinArgs
    events: EventLog
    status: Status = "Starting"
    inflight: int = 0
    requests_seen: int = 0
    crash: Callable[[], None] | None = None
    die: Callable[[], None] | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    startup_time: float = field(default_factory=time.time)
    aborted: set[str] = field(default_factory=set)
    abort_epoch: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    requests_total: int = 0
    health_generation: bool = True

    @property
    def max_total_num_tokens(self) -> int:
        """Size of the simulated KV cache."""
        return max(self.args.context_length * 4, 262_144)

    def count_request(self, request: Request) -> bool:
        """Record a client generation request; return True when it must crash the server."""
        if request.headers.get(WARMUP_HEADER) == "1":
            return False
        self.requests_seen += 1
        self.requests_total += 1
        self.events.write("request")
        limit = self.args.standin_crash_after
        return limit is not None and self.requests_seen > limit

    async def crash_now(self) -> None:
        """Trigger the simulated scheduler crash and never return."""
        logger.error("Stand-in: crashing on request %d (--standin-crash-after)", self.requests_seen)
        if self.crash is not None:
            self.crash()
        await asyncio.sleep(3.0)  # the child's SIGQUIT normally ends us long before this
        if self.die is not None:
            self.die()
        await asyncio.Event().wait()

    def model_info(self) -> dict[str, Any]:
        """Body of ``/model_info``."""
        args = self.args
        return {
            "model_path": args.model_path,
            "tokenizer_path": args.tokenizer_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "served_model_name": args.served_model_name,
            "load_format": "auto",
            "reasoning_parser": args.reasoning_parser,
            "tool_call_parser": args.tool_call_parser,
            "disaggregation_mode": "null",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
        }

    def server_info(self) -> dict[str, Any]:
        """Body of ``/server_info``."""
        info = self.args.server_args_dict()
        info.update(
            {
                "status": "ready",
                "max_total_num_tokens": self.max_total_num_tokens,
                "max_req_input_len": self.args.context_length - 1,
                "internal_states": [
                    {
                        "last_gen_throughput": 0.0,
                        "memory_usage": {"weight": 0.0, "kvcache": 0.0, "token_capacity": 0},
                        "avg_spec_accept_length": None,
                    }
                ],
                "version": STANDIN_VERSION,
                "startup_time": self.startup_time,
                "launch_command": " ".join(["python3", "-m", "sglang.launch_server", *sys.argv[1:]]),
                "frontend": "python",
            }
        )
        return info

    def model_card(self) -> dict[str, Any]:
        """One ``/v1/models`` entry."""
        name = self.args.served_model_name
        return {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "sglang",
            "root": name,
            "parent": None,
            "max_model_len": self.args.context_length,
        }


# --------------------------------------------------------------------------- helpers


def openai_error(message: str, err_type: str = "BadRequestError", code: int = 400) -> JSONResponse:
    """SGLang's top-level OpenAI error body."""
    body = {"object": "error", "message": message, "type": err_type, "param": None, "code": code}
    return JSONResponse(body, status_code=code)


async def json_body(request: Request) -> Any:
    """Return the parsed JSON body; Content-Type must be ``application/json``."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise _BadRequest(
            "1 validation error:\n  {'type': 'value_error', 'loc': ('header', 'content-type'), "
            "'msg': \"Unsupported Media Type: Only 'application/json' is allowed\"}",
            "Bad Request",
        )
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _BadRequest(
            "1 validation error:\n  {'type': 'json_invalid', "
            f"'loc': ('body', {getattr(exc, 'pos', 0)}), 'msg': 'JSON decode error'}}",
            "Bad Request",
        ) from exc


def _sse(obj: Any) -> bytes:
    """One SSE event."""
    return b"data: " + dumps(obj) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


def check_sampling(temperature: float | None, top_p: float | None, max_new: int | None) -> None:
    """SGLang's SamplingParams.verify wording for the values a client gets wrong."""
    if temperature is not None and temperature < 0:
        raise _BadRequest(f"temperature must be non-negative, got {temperature}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise _BadRequest(f"top_p must be in (0, 1], got {top_p}.")
    if max_new is not None and max_new < 0:
        raise _BadRequest(f"max_new_tokens must be at least 0, got {max_new}.")


def check_context(prompt_tokens: int, max_new: int | None, context_len: int) -> None:
    """SGLang's TokenizerManager context-length checks (real wording)."""
    if prompt_tokens >= context_len:
        raise _BadRequest(
            f"The input ({prompt_tokens} tokens) is longer than the model's context length "
            f"({context_len} tokens)."
        )
    if max_new is not None and max_new + prompt_tokens >= context_len:
        raise _BadRequest(
            "Requested token count exceeds the model's maximum context length "
            f"of {context_len} tokens. You requested a total of {max_new + prompt_tokens} "
            f"tokens: {prompt_tokens} tokens from the input messages and "
            f"{max_new} tokens for the completion. Please reduce the number of tokens in the "
            "input messages or the completion to fit within the limit."
        )


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
        return Response(status_code=200 if state.status == "Up" else 503)

    @app.get("/")
    async def root() -> JSONResponse:
        return JSONResponse("SGLang is running")

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [state.model_card()]})

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

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> PlainTextResponse:
        if state.inflight > 0:
            return PlainTextResponse(
                "Cache not flushed: there are running or waiting requests.\n", status_code=400
            )
        return PlainTextResponse(
            "Cache flushed.\nPlease check backend logs for more details. "
            "(When there are running or waiting requests, the operation will not be performed.)\n"
        )

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if body.get("abort_all"):
            state.abort_epoch += 1
        rid = body.get("rid")
        if isinstance(rid, str) and rid:
            state.aborted.add(rid)
        return Response(status_code=200)

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
        if problem is not None:
            raise _BadRequest(problem)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        prompt = tok.render_chat(messages, tools, continue_final_message=req.continue_final_message)
        prompt_tokens = len(tok.encode(prompt))
        limit = req.completion_limit()
        check_sampling(req.temperature, req.top_p, limit)
        if req.max_completion_tokens is not None and req.max_completion_tokens > args.context_length:
            raise _BadRequest(
                f"max_completion_tokens is too large: {req.max_completion_tokens}."
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
        if not calls and req.response_format is not None and req.response_format.type == "json_object":
            json_schema = '{"type": "object"}'
        elif not calls and req.response_format is not None and req.response_format.type == "json_schema":
            fmt = req.response_format.json_schema
            json_schema = json.dumps(fmt.schema_ if fmt and fmt.schema_ is not None else {})
        try:
            # a tool call's own format wins over the answer's constraint
            grammar = None if calls else compile_constraint(req.regex, req.ebnf, json_schema)
        except ConstraintError as exc:
            raise _BadRequest(str(exc)) from exc
        kwargs = req.chat_template_kwargs or {}
        thinking = bool(args.reasoning_parser) and req.reasoning_effort != "none"
        if kwargs.get("enable_thinking") is False or kwargs.get("thinking") is False:
            thinking = False
        if calls:
            body = tool_calls_text(calls)
        elif req.response_format is not None and req.response_format.type == "json_schema":
            schema = req.response_format.json_schema.schema_ if req.response_format.json_schema else None
            try:
                body = json_text(schema or {})
            except SchemaError:
                body = ""  # no example to aim at: the grammar alone shapes the answer
        elif req.response_format is not None and req.response_format.type == "json_object":
            body = json_text(None)
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
            plan = plan_chat(req)
        except _BadRequest as exc:
            if crash:
                await state.crash_now()
            return openai_error(exc.message, exc.err_type)
        state.prompt_tokens_total += plan.prompt_tokens
        rid = req.rid or uuid.uuid4().hex
        if req.stream:
            return StreamingResponse(stream_chat(req, plan, rid, crash), media_type="text/event-stream")
        state.inflight += 1
        try:
            choices = []
            completion_tokens = 0
            reasoning_tokens = 0
            for index in range(req.n):
                gen = decode_chat(req, plan)
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
            state.inflight -= 1

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
            message["content"] = content.split("<tool_call>", 1)[0].strip()
            message["tool_calls"] = [
                {
                    "id": call.call_id,
                    "index": position,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for position, call in enumerate(plan.calls)
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
        state.inflight += 1
        epoch = state.abort_epoch
        try:
            created = int(time.time())
            head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model}
            completion_tokens = 0
            reasoning_tokens = 0
            include_usage = args.stream_response_default_include_usage or bool(
                req.stream_options and req.stream_options.include_usage
            )
            for index in range(req.n):
                gen = decode_chat(req, plan)
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
                )
                raw = ""
                sent = 0
                aborted = False
                for step, piece in enumerate(gen.pieces):
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if rid in state.aborted or state.abort_epoch != epoch:
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
                                "function": {"name": started, "arguments": ""},
                            }
                            out.append(chunk({"reasoning_content": None, "tool_calls": [call_delta]}))
                        if a_delta:
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
            state.inflight -= 1
            state.aborted.discard(rid)

    # ---------------------------------------------------------------- completions

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        crash = state.count_request(request)
        req = await parse_body(request, CompletionRequest, crash=crash)
        if crash and not req.stream:
            await state.crash_now()
        prompts = _prompt_texts(req.prompt)
        try:
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
                stream_completions(req, plans, rid, crash, decode, choice_logprobs),
                media_type="text/event-stream",
            )
        state.inflight += 1
        try:
            choices = []
            completion_tokens = 0
            index = 0
            for prompt, prompt_tokens, candidate in plans:
                for _ in range(req.n):
                    gen = decode(prompt_tokens, candidate, index)
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
            state.inflight -= 1

    async def stream_completions(
        req: CompletionRequest,
        plans: Sequence[tuple[str, int, str]],
        rid: str,
        crash: bool,
        decode: Callable[[int, str, int], Generation],
        choice_logprobs: Callable[[str, Generation, int, int | None], dict[str, Any] | None],
    ) -> AsyncIterator[bytes]:
        state.inflight += 1
        try:
            head = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": req.model}
            completion_tokens = 0
            sent = 0
            index = 0
            for prompt, prompt_tokens, candidate in plans:
                for _ in range(req.n):
                    gen = decode(prompt_tokens, candidate, index)
                    completion_tokens += gen.completion_tokens
                    last = len(gen.pieces) - 1
                    for step, piece in enumerate(gen.pieces):
                        if delay > 0:
                            await asyncio.sleep(delay)
                        text = (prompt + piece) if req.echo and step == 0 else piece
                        finish = gen.finish_reason if step == last else None
                        matched = gen.matched_stop if step == last else None
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
            state.inflight -= 1

    # ---------------------------------------------------------------- native /generate

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request) -> Response:
        crash = state.count_request(request)
        try:
            body = await request.json()
        except ValueError:
            if crash:
                await state.crash_now()
            return JSONResponse({"error": {"message": "Invalid JSON body"}}, status_code=400)
        if not isinstance(body, dict):
            body = {}
        stream = bool(body.get("stream"))
        if crash and not stream:
            await state.crash_now()
        try:
            items, batched = _native_inputs(body)
            params = body.get("sampling_params") or {}
            if not isinstance(params, dict):
                raise _BadRequest("sampling_params must be an object")
            unknown = sorted(set(params) - _SAMPLING_KEYS)
            if unknown:
                if crash:
                    await state.crash_now()
                expected = ", ".join(f"`{k}`" for k in sorted(_SAMPLING_KEYS))
                return JSONResponse(
                    {"error": f"unknown field `{unknown[0]}`, expected one of {expected}"},
                    status_code=400,
                )
            max_new = params.get("max_new_tokens", 128)
            check_sampling(params.get("temperature"), params.get("top_p"), max_new)
            plans = []
            for prompt, prompt_tokens in items:
                check_context(prompt_tokens, max_new, args.context_length)
                schema = params.get("json_schema")
                if schema is not None:
                    try:
                        candidate = json_text(json.loads(schema) if isinstance(schema, str) else schema)
                    except (ValueError, SchemaError) as exc:
                        raise _BadRequest(f"Invalid json_schema: {exc}") from exc
                else:
                    candidate = " " + reply_text(echo_source(prompt))
                plans.append((prompt_tokens, candidate))
        except _BadRequest as exc:
            if crash:
                await state.crash_now()
            return JSONResponse({"error": {"message": exc.message}}, status_code=400)
        stop = params.get("stop") or []
        stops = [stop] if isinstance(stop, str) else list(stop)
        rid_value = body.get("rid")
        started = time.perf_counter()

        def decode(prompt_tokens: int, candidate: str) -> Generation:
            return generate_tokens(
                candidate,
                max_new_tokens=max_new,
                room=args.context_length - prompt_tokens,
                stop=stops,
                stop_token_ids=params.get("stop_token_ids") or (),
                ignore_eos=bool(params.get("ignore_eos")),
                min_new_tokens=int(params.get("min_new_tokens") or 0),
                no_stop_trim=bool(params.get("no_stop_trim")),
            )

        def meta(rid: str, gen: Generation, prompt_tokens: int, done: bool) -> dict[str, Any]:
            finish: dict[str, Any] | None = None
            if done:
                if gen.finish_reason == "length":
                    finish = {"type": "length", "length": gen.completion_tokens}
                elif gen.finish_reason == "abort":
                    finish = {"type": "abort", "message": "Abort request"}
                else:
                    finish = {"type": "stop", "matched": gen.matched_stop}
            return {
                "id": rid,
                "finish_reason": finish,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": gen.completion_tokens,
                "cached_tokens": 0,
                "reasoning_tokens": 0,
                "weight_version": "default",
                "e2e_latency": time.perf_counter() - started,
            }

        if stream:
            single = plans[0]
            rid = rid_value if isinstance(rid_value, str) else uuid.uuid4().hex

            async def events() -> AsyncIterator[bytes]:
                state.inflight += 1
                try:
                    gen = decode(*single)
                    text = ""
                    for step, piece in enumerate(gen.pieces):
                        if delay > 0:
                            await asyncio.sleep(delay)
                        text += piece
                        done = step == len(gen.pieces) - 1
                        partial = Generation(
                            gen.token_ids[: step + 1], [], text, gen.finish_reason, gen.matched_stop
                        )
                        obj = {
                            "text": text,
                            "output_ids": partial.token_ids,
                            "meta_info": meta(rid, partial, single[0], done),
                        }
                        yield _sse(obj)
                        if crash and step >= 1:
                            await asyncio.sleep(0.05)
                            await state.crash_now()
                    if crash:
                        await state.crash_now()
                    state.generation_tokens_total += gen.completion_tokens
                    yield _DONE
                finally:
                    state.inflight -= 1

            return StreamingResponse(events(), media_type="text/event-stream")

        state.inflight += 1
        try:
            outputs = []
            for number, (prompt_tokens, candidate) in enumerate(plans):
                gen = decode(prompt_tokens, candidate)
                await pace(gen.completion_tokens)
                state.generation_tokens_total += gen.completion_tokens
                rid = rid_value if isinstance(rid_value, str) and number == 0 else uuid.uuid4().hex
                outputs.append(
                    {
                        "text": gen.text,
                        "output_ids": gen.token_ids,
                        "meta_info": meta(rid, gen, prompt_tokens, True),
                    }
                )
            return JSONResponse(outputs if batched else outputs[0])
        finally:
            state.inflight -= 1

    app.add_middleware(_AuthMiddleware, api_key=args.api_key)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    return app


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


def _native_inputs(body: Mapping[str, Any]) -> tuple[list[tuple[str, int]], bool]:
    """Return ``[(prompt_text, prompt_tokens)]`` and whether the input was a batch."""
    text = body.get("text")
    input_ids = body.get("input_ids")
    if (text is None) == (input_ids is None):
        raise _BadRequest("Either text or input_ids should be provided.")
    if text is not None:
        if isinstance(text, str):
            return [(text, len(tok.encode(text)))], False
        if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
            return [(t, len(tok.encode(t))) for t in text], True
        raise _BadRequest("text must be a string or a non-empty list of strings")
    if isinstance(input_ids, list) and input_ids and all(isinstance(i, int) for i in input_ids):
        return [(tok.decode(input_ids), len(input_ids))], False
    if (
        isinstance(input_ids, list)
        and input_ids
        and all(isinstance(i, list) and i and all(isinstance(x, int) for x in i) for i in input_ids)
    ):
        return [(tok.decode(ids), len(ids)) for ids in input_ids], True
    raise _BadRequest("input_ids must be a non-empty list of ints or of lists of ints")


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_UNAUTHORIZED = b'{"error":"Unauthorized"}'


class _AuthMiddleware:
    """SGLang's ``--api-key`` check as a plain ASGI middleware (cheap per request)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.expected = f"bearer {api_key}".encode() if api_key else None
        self.key = api_key.encode() if api_key else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or self._exempt(scope):
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_UNAUTHORIZED)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})

    @staticmethod
    def _exempt(scope: Scope) -> bool:
        """OPTIONS and health/metrics/ready paths need no key."""
        if scope.get("method") == "OPTIONS":
            return True
        path: str = scope.get("path", "")
        return path.startswith(("/health", "/metrics", "/ready"))


def env_health_generation() -> bool:
    """Whether ``/health`` runs a (simulated) generation (``SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION``)."""
    value = os.environ.get("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "true").strip().lower()
    return value not in {"0", "false", "no", "off"}
