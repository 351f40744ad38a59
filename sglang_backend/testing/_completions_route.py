"""``/v1/completions``: plain and streamed, one choice per prompt and ``n``, as SGLang's
serving_completions gives them.
"""


from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._checks import check_context, check_sampling
from sglang_backend.testing._engine import (
    ConstraintError,
    Generation,
    compile_constraint,
    echo_source,
    generate_tokens,
    json_text,
    reply_text,
    reply_variants,
    sample_generation,
    sampling_for,
)
from sglang_backend.testing._protocol import (
    CompletionRequest,
)
from sglang_backend.testing._replies import DONE as _DONE
from sglang_backend.testing._replies import BadRequest as _BadRequest
from sglang_backend.testing._replies import JSONResponse, openai_error
from sglang_backend.testing._replies import sse as _sse
from sglang_backend.testing._route_context import RouteContext, off_loop, stop_regex, usage_body
from sglang_backend.testing._sampling import completion_logprobs
from sglang_backend.testing._schema import SchemaError

__all__ = ["register"]



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


def register(app: FastAPI, ctx: RouteContext) -> None:
    """The completions route."""
    state = ctx.state
    args = state.args
    parse_body = ctx.parse_body
    pace = ctx.pace
    delay = max(args.standin_token_delay, 0.0)

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
                "stop_regex": stop_regex(req),
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
