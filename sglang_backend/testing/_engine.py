"""The stand-in's "model": deterministic replies, token accounting and stream splitting."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._sampling import SamplingParams, TokenLogprob, choice_rng
from sglang_backend.testing._schema import SchemaError, example_for_schema
from sglang_backend.testing._tool_formats import Rendered, canonical_arguments, render

__all__ = [
    "ConstraintError",
    "Generation",
    "PlannedCall",
    "StreamSplitter",
    "compile_constraint",
    "echo_source",
    "generate_tokens",
    "json_text",
    "new_call_id",
    "reply_text",
    "reply_variants",
    "sample_generation",
    "sampling_for",
    "split_reasoning",
    "think_text",
    "tool_call_text",
    "tool_calls_text",
]

FinishReason = Literal["stop", "length", "abort"]
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_REPLY_TAIL = "This is a deterministic reply from the SGLang stand-in."
_MAX_ECHO_WORDS = 64


class ConstraintError(ValueError):
    """A constraint SGLang rejects with 400 (its wording is the message)."""


def compile_constraint(
    regex: str | None, ebnf: str | None, json_schema: str | None, structural_tag: str | None = None
) -> str | None:
    """Compile the request's one constraint (None when it has none), like SGLang.

    More than one is SamplingParams.verify's error; one that does not compile is the
    grammar manager's "Failed to compile ... grammar" abort.
    """
    kinds = [("json_schema", json_schema), ("regex", regex), ("ebnf", ebnf)]
    kinds.append(("structural_tag", structural_tag))
    given = [(kind, text) for kind, text in kinds if text is not None]
    if len(given) > 1:
        raise ConstraintError("Only one of json_schema, regex, ebnf, or structural_tag can be set.")
    if not given:
        return None
    kind, text = given[0]
    from sglang_backend.testing import _grammar  # llguidance loads at the first decode, not at startup
    from sglang_backend.testing._structural_tag import compile_structural_tag

    try:
        if kind == "structural_tag":
            return compile_structural_tag(text)
        return _grammar.compile_grammar(kind, text)  # type: ignore[arg-type]
    except _grammar.GrammarError as exc:
        raise ConstraintError(f"Failed to compile {kind} grammar: {exc}") from exc


def sampling_for(
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    min_p: float | None,
    seed: int | None,
    n: int,
) -> SamplingParams:
    """The request's sampling; unset temperature is greedy unless ``n > 1`` or a seed asks
    for samples (then SGLang's default, 1.0)."""
    if temperature is None and (n > 1 or seed is not None):
        temperature = 1.0
    return SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed)


def new_call_id() -> str:
    """Return a tool call id like SGLang's (``call_`` + 24 hex digits)."""
    return "call_" + secrets.token_hex(12)


def echo_source(prompt: str) -> str:
    """Return the part of a raw prompt that a reply echoes (last user turn if templated)."""
    marker = f"{tok.BOS_TEXT}user\n"
    if marker in prompt:
        tail = prompt.rsplit(marker, 1)[1]
        return tail.split(tok.EOS_TEXT, 1)[0]
    return prompt


def reply_text(user_text: str, tool_result: str | None = None) -> str:
    """The deterministic answer: echo the user's words (or the tool's result)."""
    if tool_result is not None:
        words = tool_result.split()[:_MAX_ECHO_WORDS]
        said = " ".join(words) or "nothing"
        return f"The tool returned: {said}. {_REPLY_TAIL}"
    words = user_text.split()[-_MAX_ECHO_WORDS:]
    said = " ".join(words)
    if not said:
        return f"You said nothing. {_REPLY_TAIL}"
    if not re.search(r"[.!?]$", said):
        said += "."
    return f"You said: {said} {_REPLY_TAIL}"


_TAILS = (
    "This is a sampled reply from the SGLang stand-in.",
    "The SGLang stand-in wrote this reply.",
    "Here is another answer from the SGLang stand-in.",
)


def reply_variants(reply: str) -> tuple[str, ...]:
    """The replies the model may sample: *reply* itself (its mode) and other endings."""
    if not reply.endswith(_REPLY_TAIL):
        return (reply,)
    head = reply[: -len(_REPLY_TAIL)]
    return (reply, *(head + tail for tail in _TAILS))


def think_text(user_text: str) -> str:
    """The thinking section produced when a reasoning parser is configured."""
    count = len(user_text.split())
    return f"{THINK_OPEN}\nThe user wrote {count} words. I will answer deterministically.\n{THINK_CLOSE}\n\n"


def json_text(schema: Mapping[str, Any] | None) -> str:
    """A JSON document valid for *schema* (any JSON object when *schema* is None)."""
    if schema is None:
        return json.dumps({"response": "stand-in", "ok": True})
    return json.dumps(example_for_schema(schema))


@dataclass
class PlannedCall:
    """A tool call the model will emit."""

    name: str
    arguments: str
    call_id: str = field(default_factory=new_call_id)


def tool_call_text(call: PlannedCall) -> str:
    """The raw (Qwen-style) text of a tool call; ``arguments`` appears verbatim in it."""
    return f'<tool_call>\n{{"name": {json.dumps(call.name)}, "arguments": {call.arguments}}}\n</tool_call>'


def tool_calls_text(calls: Sequence[PlannedCall]) -> str:
    """Several calls in one message, one ``<tool_call>`` block a line (Qwen form; the
    parser's own format: :func:`_tool_formats.render`)."""
    return render(None, calls).text


def plan_call(name: str, parameters: Mapping[str, Any] | None) -> PlannedCall:
    """Plan a call of tool *name* with arguments valid for its *parameters* schema.

    The arguments are canonical JSON (what SGLang's parsers re-serialize to).
    The example value is what the model aims at; when it does not validate (or cannot be
    built) the grammar engine decodes the arguments under the schema instead, so they are
    valid by construction.  Raises SchemaError if neither can produce arguments.
    """
    import jsonschema

    from sglang_backend.testing import _grammar

    schema: Mapping[str, Any] = parameters or {"type": "object", "properties": {}}
    target = ""
    try:
        value = example_for_schema(schema)
        target = json.dumps(value)
        if jsonschema.Draft202012Validator(schema).is_valid(value):
            return PlannedCall(name=name, arguments=canonical_arguments(target))
    except SchemaError:
        pass
    try:
        grammar = _grammar.compile_grammar("json_schema", json.dumps(schema))
        decoded = _grammar.decode(grammar, target, SamplingParams(), choice_rng(0, 0), max_steps=2048)
    except _grammar.GrammarError as exc:
        raise SchemaError(str(exc)) from exc
    if not decoded.finished:
        raise SchemaError("no arguments fit the schema within 2048 tokens")
    return PlannedCall(name=name, arguments=canonical_arguments(decoded.text))


@dataclass
class Generation:
    """The result of decoding: ids (EOS included), text pieces per id and how it ended."""

    token_ids: list[int]
    pieces: list[str]
    text: str
    finish_reason: FinishReason
    matched_stop: int | str | None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per text piece (no EOS)

    @property
    def completion_tokens(self) -> int:
        """Number of generated tokens."""
        return len(self.token_ids)


def generate_tokens(
    candidate: str,
    *,
    max_new_tokens: int | None,
    room: int,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    min_new_tokens: int = 0,
    no_stop_trim: bool = False,
    stop_regex: Sequence[str] = (),
) -> Generation:
    """Decode *candidate* token by token, like a sampler that always picks it.

    Stops at a stop string or a match of a *stop_regex* pattern (text cut before it
    unless *no_stop_trim*; ``matched_stop`` is the string or pattern), a stop token id,
    EOS (after the candidate, unless *ignore_eos*: then the candidate repeats),
    *max_new_tokens* ("length") or when the context has no *room* left ("length").
    """
    limit = room if max_new_tokens is None else min(max_new_tokens, room)
    limit = max(limit, 0)
    base = tok.split(candidate) or [" ."]
    ids: list[int] = []
    pieces: list[str] = []
    text = ""
    stops = [s for s in stop if s]
    patterns = [(p, re.compile(p)) for p in stop_regex if p]
    stop_ids = set(stop_token_ids)
    longest = max((len(s) for s in stops), default=0)
    index = 0
    while True:
        if len(ids) >= limit:
            return Generation(ids, pieces, text, "length", None)
        if index >= len(base):
            if not ignore_eos and len(ids) >= min_new_tokens:
                ids.append(tok.EOS_ID)
                pieces.append("")
                return Generation(ids, pieces, text, "stop", tok.EOS_ID)
            index = 0
        piece = base[index]
        index += 1
        token = tok.encode(piece)[0] if piece else tok.EOS_ID
        ids.append(token)
        before = len(text)
        text += piece
        pieces.append(piece)
        if token in stop_ids and len(ids) >= min_new_tokens:
            return Generation(ids, pieces, text, "stop", token)
        if stops and len(ids) >= min_new_tokens:
            window_start = max(0, before - longest)
            hit: tuple[int, str] | None = None
            for s in stops:
                found = text.find(s, window_start)
                if found >= 0 and (hit is None or found < hit[0]):
                    hit = (found, s)
            if hit is not None:
                cut = hit[0] + (len(hit[1]) if no_stop_trim else 0)
                text = text[:cut]
                pieces = _clip_pieces(pieces, len(text))
                return Generation(ids, pieces, text, "stop", hit[1])
        if patterns and len(ids) >= min_new_tokens:
            for source, pattern in patterns:
                match = pattern.search(text)
                if match is not None:
                    text = text[: match.end() if no_stop_trim else match.start()]
                    pieces = _clip_pieces(pieces, len(text))
                    return Generation(ids, pieces, text, "stop", source)


def sample_generation(
    targets: Sequence[str],
    *,
    grammar: str | None,
    params: SamplingParams,
    choice: int,
    max_new_tokens: int | None,
    room: int,
    top_logprobs: int = 0,
    prefix: str = "",
    **limits: Any,
) -> Generation:
    """Sample one choice: constrained by *grammar*, else one of the *targets* (first = mode).

    The text comes from :func:`_grammar.decode` (RNG from ``(params.seed, choice)``),
    then :func:`generate_tokens` applies stops and limits to it; ``logprobs`` has one
    entry per emitted piece.  *prefix* is said before the constrained part (a thinking
    section: SGLang applies the grammar after the reasoning ends).  *limits* are
    :func:`generate_tokens`' keyword arguments.
    """
    from sglang_backend.testing import _grammar

    target = targets[0]
    if grammar is None:
        grammar, prefix = _grammar.literal_grammar(*targets), ""
    budget = room if max_new_tokens is None else min(max_new_tokens, room)
    decoded = _grammar.decode(
        grammar,
        target,
        params,
        choice_rng(params.seed, choice),
        max_steps=max(0, min(4 * budget + 8, 8192)),
        top_logprobs=top_logprobs,
    )
    if prefix:
        decoded.steps = [(offset + len(prefix), entry) for offset, entry in decoded.steps]
        decoded.text = prefix + decoded.text
    gen = generate_tokens(decoded.text, max_new_tokens=max_new_tokens, room=room, **limits)
    base = _grammar.piece_logprobs(decoded, tok.split(decoded.text) or [" ."])
    emitted = [piece for token, piece in zip(gen.token_ids, gen.pieces, strict=True) if token != tok.EOS_ID]
    # ignore_eos repeats the text, so the entries repeat with it
    gen.logprobs = [
        TokenLogprob(entry.token_id, piece, entry.logprob, entry.top)
        for entry, piece in ((base[i % len(base)], piece) for i, piece in enumerate(emitted))
    ]
    return gen


def _clip_pieces(pieces: list[str], length: int) -> list[str]:
    """Clip per-token text pieces so that they concatenate to ``length`` characters."""
    out: list[str] = []
    used = 0
    for piece in pieces:
        take = max(0, min(len(piece), length - used))
        out.append(piece[:take])
        used += take
    return out


def split_reasoning(text: str, *, final: bool) -> tuple[str, str]:
    """Split raw text into (reasoning, content) the way a reasoning parser does.

    On partial text (``final=False``) anything that could still turn into the closing
    tag is held back, so successive results only grow.
    """
    if not text.startswith(THINK_OPEN):
        if not final and THINK_OPEN.startswith(text):
            return "", ""
        return "", text
    body = text[len(THINK_OPEN) :]
    close = body.find(THINK_CLOSE)
    if close >= 0:
        return body[:close].strip(), body[close + len(THINK_CLOSE) :].lstrip()
    if not final:
        trimmed = body.rstrip()
        for size in range(len(THINK_CLOSE), 0, -1):
            if trimmed.endswith(THINK_CLOSE[:size]):
                body = trimmed[:-size]
                break
    return body.strip(), ""


@dataclass
class StreamSplitter:
    """Turns growing raw model text into reasoning/content/tool-call deltas.

    *calls* are the tool calls the raw text holds and *rendered* their text in the
    parser's wire format (Qwen form when None), starting *body_offset* characters into
    the content; each call is reported once, when SGLang's streaming parser lets it out
    (its name, then argument fragments or the whole arguments, per the format).
    """

    separate_reasoning: bool
    reasoning: bool
    calls: Sequence[PlannedCall] = ()
    rendered: Rendered | None = None
    body_offset: int = 0
    sent_reasoning: str = ""
    sent_content: str = ""
    sent_args: list[str] = field(default_factory=list)
    started: int = 0  # calls whose name has been sent (or that the parser skips)
    announced: bool = False  # whether any call has been reported

    @property
    def call_started(self) -> bool:
        """Whether any tool call has begun."""
        return self.announced

    def feed(self, raw: str, *, final: bool) -> tuple[str, str, list[tuple[int, str | None, str]]]:
        """Return ``(reasoning_delta, content_delta, [(call_index, name_if_new, args_delta)])``."""
        if self.reasoning and self.separate_reasoning:
            reasoning, content = split_reasoning(raw, final=final)
        else:
            reasoning, content = "", raw
        r_delta = reasoning[len(self.sent_reasoning) :] if reasoning.startswith(self.sent_reasoning) else ""
        self.sent_reasoning = (
            reasoning if r_delta or reasoning == self.sent_reasoning else self.sent_reasoning
        )
        if not self.calls:
            c_delta = content[len(self.sent_content) :]
            self.sent_content = content
            return r_delta, c_delta, []
        if self.rendered is None:
            self.rendered = render(None, self.calls)
        while len(self.sent_args) < len(self.calls):
            self.sent_args.append("")
        out: list[tuple[int, str | None, str]] = []
        offset = self.body_offset
        for index, (call, span) in enumerate(zip(self.calls, self.rendered.spans, strict=True)):
            if len(content) < offset + span.announce:
                break
            if index in self.rendered.dropped:
                self.started = max(self.started, index + 1)
                continue
            self.announced = True
            name: str | None = None
            if index >= self.started:
                self.started = index + 1
                name = call.name
            if span.whole:
                args = self.rendered.arguments[index]
            else:
                args = content[offset + span.args_start : offset + span.args_end]
            delta = args[len(self.sent_args[index]) :]
            self.sent_args[index] = args
            if name is not None or delta:
                out.append((index, name, delta))
        return r_delta, "", out
