"""``/v1/chat/completions``: the plan of a reply (text, thinking, tool calls, constraints), its
decoding, and the plain and streamed answers as SGLang's serving_chat gives them.
"""


from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

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
)
from sglang_backend.testing._protocol import (
    ChatCompletionRequest,
    ToolChoiceNamed,
)
from sglang_backend.testing._replies import DONE as _DONE
from sglang_backend.testing._replies import BadRequest as _BadRequest
from sglang_backend.testing._replies import JSONResponse, openai_error
from sglang_backend.testing._replies import sse as _sse
from sglang_backend.testing._route_context import RouteContext, off_loop, stop_regex, usage_body
from sglang_backend.testing._sampling import SamplingParams, chat_logprobs, choice_rng
from sglang_backend.testing._schema import SchemaError, tool_schema_problem
from sglang_backend.testing._structural_tag import structural_tag_target
from sglang_backend.testing._tool_formats import Rendered, call_id, render

__all__ = ["register"]



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


def register(app: FastAPI, ctx: RouteContext) -> None:
    """The chat route."""
    state = ctx.state
    args = state.args
    parse_body = ctx.parse_body
    pace = ctx.pace
    delay = max(args.standin_token_delay, 0.0)

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
            "stop_regex": stop_regex(req),
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
