"""SGLang's native ``/generate`` (POST/PUT) as 0.5.23 serves it.

* ``text`` (str or list) or ``input_ids`` (list or list of lists); none of them: 400
  "Either text, input_ids or input_embeds should be provided."; both: ``input_ids`` is
  used (0.5.23 only refuses text, input_ids *and* input_embeds together).
* A list input, or ``sampling_params.n`` > 1, answers a JSON list (inputs times n).
  Streamed, the outputs are interleaved token by token, each event with its ``index``.
* ``sampling_params`` (an object, or one per input) is checked against the API contract:
  the first unknown key is a 400 ``{"error": "unknown field `k`, expected one of …"}``.
* Other request errors: 400 ``{"error": {"message"}}``; when streaming, a 200 stream
  with ``data: {"error": {message, type, code, retryable}}`` then ``[DONE]``.
* Every output is registered by rid; ``/abort_request`` (or a client that went away)
  stops it with ``finish_reason`` ``{"type": "abort", "message": "Aborted", …}``.
* ``lora_path`` names a loaded adapter (400 otherwise, see ``_lora.py``).
* With ``--reasoning-parser`` the text starts with a ``<think>`` section and
  ``meta_info.reasoning_tokens`` counts its tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
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
    reply_text,
    reply_variants,
    sample_generation,
    sampling_for,
    think_text,
)
from sglang_backend.testing._replies import DONE, BadRequest, JSONResponse, native_error, sse
from sglang_backend.testing._requests_registry import ABORT_FINISH, new_rid
from sglang_backend.testing._sampling import SamplingParams, TokenLogprob, native_logprobs
from sglang_backend.testing._state import ServerState

__all__ = ["SAMPLING_PARAMS_FIELDS", "register"]

#: ``sglang.api.v1.SamplingParams`` fields, in the contract's order (its 400 lists them so).
SAMPLING_PARAMS_FIELDS = (
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k",
    "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n",
    "json_schema", "regex", "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens",
    "spaces_between_special_tokens", "no_stop_trim", "stream_interval", "logit_bias",
    "sampling_seed", "custom_params", "beam_width", "watermark", "choice",
)  # fmt: skip
_FIELDS = frozenset(SAMPLING_PARAMS_FIELDS)


class _ContractError(Exception):
    """A body the API contract refuses: 400 with a *string* ``error``."""


@dataclass
class _Item:
    """One output to produce: its prompt, sampling params and rid."""

    rid: str
    prompt: str
    prompt_ids: list[int]
    params: Mapping[str, Any]
    choice: int = 0
    candidate: str = ""
    think: str = ""
    grammar: str | None = None
    sampling: SamplingParams | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


@dataclass
class _Logprobs:
    """What the request asked of logprobs (``return_logprob`` and friends)."""

    on: bool = False
    top: int = 0
    start: int = -1
    token_ids: list[int] | None = None
    with_text: bool = False


def _logprob_of(token_id: int, position: int) -> float:
    """A deterministic log-probability for a prompt token (the stand-in runs no model)."""
    return -0.05 - ((token_id * 31 + position * 7) % 400) / 100.0


def _input_logprobs(ids: Sequence[int], ask: _Logprobs) -> dict[str, Any]:
    """``input_*`` logprob fields: the first prompt token has none (``None``), as SGLang."""
    start = max(ask.start, 0) if ask.start >= 0 else 0
    text = (lambda i: tok.decode([i], skip_special_tokens=False)) if ask.with_text else (lambda i: None)
    triples = [
        [None if pos == 0 else _logprob_of(i, pos), i, text(i)] for pos, i in enumerate(ids) if pos >= start
    ]
    tops = [
        None if pos == 0 else [[_logprob_of(i, pos), i, text(i)]][: ask.top]
        for pos, i in enumerate(ids)
        if pos >= start
    ]
    out: dict[str, Any] = {"input_token_logprobs": triples, "input_top_logprobs": tops if ask.top else []}
    if ask.token_ids is not None:
        out["input_token_ids_logprobs"] = [
            None if pos == 0 else [[_logprob_of(t, pos), t, text(t)] for t in ask.token_ids]
            for pos, _ in enumerate(ids)
            if pos >= start
        ]
    return out


def _unknown_key(params: Any) -> None:
    if not isinstance(params, dict):
        raise _ContractError("invalid type: expected struct SamplingParams")
    for key in params:
        if key not in _FIELDS:
            listed = ", ".join(f"`{f}`" for f in SAMPLING_PARAMS_FIELDS)
            raise _ContractError(f"unknown field `{key}`, expected one of {listed}")


def _inputs(body: Mapping[str, Any]) -> tuple[list[tuple[str, list[int]]], bool]:
    """``[(prompt_text, prompt_ids)]`` and whether the input was a batch."""
    text = body.get("text")
    input_ids = body.get("input_ids")
    if text is None and input_ids is None:
        raise BadRequest("Either text, input_ids or input_embeds should be provided.")
    if input_ids is not None:
        if isinstance(input_ids, list) and input_ids and all(isinstance(i, int) for i in input_ids):
            return [(tok.decode(input_ids), list(input_ids))], False
        if (
            isinstance(input_ids, list)
            and input_ids
            and all(isinstance(i, list) and all(isinstance(x, int) for x in i) for i in input_ids)
        ):
            return [(tok.decode(ids), list(ids)) for ids in input_ids], True
        raise BadRequest("input_ids must be a non-empty list of ints or of lists of ints")
    if isinstance(text, str):
        return [(text, tok.encode(text))], False
    if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
        return [(t, tok.encode(t)) for t in text], True
    raise BadRequest("text must be a string or a non-empty list of strings")


def _rids(body: Mapping[str, Any], count: int) -> list[str]:
    """One rid per output: the given rid (or list of rids), ``{rid}_{i}`` for n > 1."""
    given = body.get("rid")
    if isinstance(given, list) and len(given) == count and all(isinstance(r, str) for r in given):
        return list(given)
    if isinstance(given, str) and given:
        return [given] if count == 1 else [f"{given}_{i}" for i in range(count)]
    return [new_rid() for _ in range(count)]


def _check(params: Mapping[str, Any], prompt_tokens: int, context_len: int) -> None:
    """SamplingParams.verify and the TokenizerManager length checks (SGLang's wording)."""
    max_new = params.get("max_new_tokens", 128)
    check_sampling(params.get("temperature"), params.get("top_p"), max_new)
    check_context(prompt_tokens, max_new, context_len)


def _stream_error(message: str, code: int = 400) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "code": code, "retryable": False}
    return sse({"error": error}) + DONE


def register(app: FastAPI, state: ServerState) -> None:
    """Add ``/generate`` to *app*."""
    args = state.args
    delay = max(args.standin_token_delay, 0.0)

    def plan(body: Mapping[str, Any]) -> tuple[list[_Item], bool]:
        raw_params = body.get("sampling_params") or {}
        params_list = raw_params if isinstance(raw_params, list) else None
        for params in params_list or [raw_params]:
            _unknown_key(params)
        inputs, batched = _inputs(body)
        ask = logprob_request(body)
        if params_list is not None and len(params_list) != len(inputs):
            raise BadRequest("The length of sampling_params should match the batch size.")
        per_input = params_list or [raw_params] * len(inputs)
        n = int(per_input[0].get("n") or 1)
        lora = body.get("lora_path")
        for name in lora if isinstance(lora, list) else [lora]:
            if name is not None:
                state.loras.require(name)
        expanded = [(p, t, prm) for (p, t), prm in zip(inputs, per_input, strict=True) for _ in range(n)]
        rids = _rids(body, len(expanded))
        items = []
        for index, (rid, (prompt, ids, params)) in enumerate(zip(rids, expanded, strict=True)):
            _check(params, len(ids), args.context_length)
            schema = params.get("json_schema")
            try:
                grammar = compile_constraint(
                    params.get("regex"),
                    params.get("ebnf"),
                    json.dumps(schema) if isinstance(schema, dict) else schema,
                )
            except ConstraintError as exc:
                raise BadRequest(str(exc)) from exc
            sampling = sampling_for(
                params.get("temperature"), params.get("top_p"), params.get("top_k"),
                params.get("min_p"), params.get("sampling_seed"), n,
            )  # fmt: skip
            source = echo_source(prompt)
            think = think_text(source) if args.reasoning_parser is not None else ""
            candidate = (
                ("" if schema is not None else reply_text(source)) if grammar else " " + reply_text(source)
            )
            sampled = grammar is not None or not sampling.greedy or ask.on
            items.append(
                _Item(
                    rid,
                    prompt,
                    ids,
                    params,
                    index % n,
                    candidate,
                    think,
                    grammar,
                    sampling if sampled else None,
                )
            )
        return items, batched or len(items) > 1

    def logprob_request(body: Mapping[str, Any]) -> _Logprobs:
        token_ids = body.get("token_ids_logprob")
        return _Logprobs(
            on=bool(body.get("return_logprob")),
            top=int(body.get("top_logprobs_num") or 0),
            start=int(body.get("logprob_start_len") or -1) if body.get("logprob_start_len") != 0 else 0,
            token_ids=[int(t) for t in token_ids] if isinstance(token_ids, list) else None,
            with_text=bool(body.get("return_text_in_logprobs")),
        )

    def decode(item: _Item, ask: _Logprobs) -> Generation:
        params = item.params
        stop = params.get("stop") or []
        regex = params.get("stop_regex") or []
        limits: dict[str, Any] = {
            "max_new_tokens": params.get("max_new_tokens", 128),
            "room": args.context_length - item.prompt_tokens,
            "stop": [stop] if isinstance(stop, str) else list(stop),
            "stop_token_ids": params.get("stop_token_ids") or (),
            "ignore_eos": bool(params.get("ignore_eos")),
            "min_new_tokens": int(params.get("min_new_tokens") or 0),
            "no_stop_trim": bool(params.get("no_stop_trim")),
            "stop_regex": [regex] if isinstance(regex, str) else list(regex),
        }
        if item.sampling is None:
            return generate_tokens(item.think + item.candidate, **limits)
        if item.grammar is not None:
            return sample_generation(
                [item.candidate], grammar=item.grammar, params=item.sampling, choice=item.choice,
                top_logprobs=ask.top, prefix=item.think, **limits,
            )  # fmt: skip
        targets = [item.think + v for v in reply_variants(item.candidate)]
        return sample_generation(
            targets, grammar=None, params=item.sampling, choice=item.choice, top_logprobs=ask.top, **limits
        )

    def reasoning_tokens(item: _Item, pieces: Sequence[str]) -> int:
        if not item.think:
            return 0
        text = ""
        for count, piece in enumerate(pieces, start=1):
            text += piece
            if "</think>" in text:
                return count
        return len(pieces)

    def output(
        item: _Item,
        gen: Generation,
        steps: int,
        finish: dict[str, Any] | None,
        started: float,
        ask: _Logprobs,
    ) -> dict[str, Any]:
        ids = gen.token_ids[:steps]
        pieces = gen.pieces[:steps]
        result: dict[str, Any] = {
            "text": "".join(pieces) if steps < len(gen.token_ids) or finish is None else gen.text,
            "output_ids": ids,
            "meta_info": {
                "id": item.rid,
                "finish_reason": finish,
                "prompt_tokens": item.prompt_tokens,
                "weight_version": state.weight_version,
                "num_retractions": 0,
                "reasoning_tokens": reasoning_tokens(item, pieces),
                "completion_tokens": len(ids),
                "cached_tokens": 0,
                "e2e_latency": time.perf_counter() - started,
            },
        }
        if ask.on:
            meta = result["meta_info"]
            meta.update(_input_logprobs(item.prompt_ids, ask))
            # one entry per output id: the EOS the engine leaves out gets one too, as SGLang
            entries = list(gen.logprobs[:steps])
            for position in range(len(entries), len(ids)):
                token_id = ids[position]
                text = tok.decode([token_id], skip_special_tokens=False)
                entries.append(TokenLogprob(token_id, text, _logprob_of(token_id, position)))
            meta.update(native_logprobs(entries, ask.top, with_text=ask.with_text))
            if ask.token_ids is not None:
                meta["output_token_ids_logprobs"] = [
                    [
                        [_logprob_of(t, i), t, tok.decode([t]) if ask.with_text else None]
                        for t in ask.token_ids
                    ]
                    for i, _ in enumerate(entries)
                ]
        return result

    def finish_of(gen: Generation) -> dict[str, Any]:
        if gen.finish_reason == "length":
            return {"type": "length", "length": gen.completion_tokens}
        return {"type": "stop", "matched": gen.matched_stop}

    async def run_one(item: _Item, request: Request, started: float, ask: _Logprobs) -> dict[str, Any]:
        """Generate one output, token time by token time, stopping on abort or disconnect."""
        gen = decode(item, ask)
        steps = len(gen.token_ids)
        for step in range(len(gen.token_ids)):
            if state.registry.aborted(item.rid) or await state.registry.wait(item.rid, delay):
                steps = step
                break
            if delay > 0 and await request.is_disconnected():
                state.registry.disconnected(item.rid)  # aborts it a little later, as SGLang
        if steps < len(gen.token_ids) or state.registry.aborted(item.rid):
            return output(item, gen, steps, dict(ABORT_FINISH), started, ask)
        state.generation_tokens_total += gen.completion_tokens
        return output(item, gen, steps, finish_of(gen), started, ask)

    async def stream(
        items: Sequence[_Item], indexed: bool, crash: bool, started: float, ask: _Logprobs
    ) -> AsyncIterator[bytes]:
        """Stream every item token by token; a batch interleaves them with ``index`` (SGLang's
        ``_stream_batch_responses``)."""
        for item in items:
            state.enter(item.rid, "generate")
        try:
            gens = [decode(item, ask) for item in items]
            done = [False] * len(items)
            sent = 0
            for step in range(max(len(g.token_ids) for g in gens)):
                if delay > 0:
                    await asyncio.sleep(delay)
                for index, (item, gen) in enumerate(zip(items, gens, strict=True)):
                    if done[index]:
                        continue
                    if state.registry.aborted(item.rid):
                        out = output(item, gen, step, dict(ABORT_FINISH), started, ask)
                        done[index] = True
                    else:
                        last = step == len(gen.token_ids) - 1
                        out = output(item, gen, step + 1, finish_of(gen) if last else None, started, ask)
                        if last:
                            done[index] = True
                            state.generation_tokens_total += gen.completion_tokens
                    if indexed:
                        out["index"] = index
                    yield sse(out)
                    sent += 1
                    if crash and sent >= 2:
                        await asyncio.sleep(0.05)
                        await state.crash_now()
                if all(done):
                    break
            if crash:
                await state.crash_now()
            yield DONE
        finally:
            for item in items:
                state.leave(item.rid)

    async def errors(message: str) -> AsyncIterator[bytes]:
        yield _stream_error(message)

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request) -> Response:
        crash = state.count_request(request)
        try:
            body = await request.json()
        except ValueError:
            if crash:
                await state.crash_now()
            return native_error("Invalid JSON body")
        if not isinstance(body, dict):
            body = {}
        is_stream = bool(body.get("stream"))
        if crash and not is_stream:
            await state.crash_now()
        started = time.perf_counter()
        try:
            items, as_list = plan(body)
        except _ContractError as exc:
            if crash:
                await state.crash_now()
            return JSONResponse({"error": str(exc)}, status_code=400)
        except BadRequest as exc:
            if crash:
                await state.crash_now()
            message = exc.message
            if is_stream:
                return StreamingResponse(errors(message), media_type="text/event-stream")
            return native_error(message)
        ask = logprob_request(body)
        state.prompt_tokens_total += sum(i.prompt_tokens for i in items)
        await state.unpaused.wait()  # /pause_generation holds new requests (TokenizerManager.is_pause_cond)
        if is_stream:
            return StreamingResponse(
                state.watch([i.rid for i in items], stream(items, as_list, crash, started, ask), request),
                media_type="text/event-stream",
            )
        for item in items:
            state.enter(item.rid, "generate", request)
        try:
            outputs = await asyncio.gather(*(run_one(item, request, started, ask) for item in items))
        finally:
            for item in items:
                state.leave(item.rid)
        return JSONResponse(list(outputs) if as_list else outputs[0])
