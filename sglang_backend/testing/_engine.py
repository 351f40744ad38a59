"""The stand-in's "model": deterministic replies, token accounting and stream splitting."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._schema import example_for_schema

__all__ = [
    "Generation",
    "PlannedCall",
    "StreamSplitter",
    "echo_source",
    "generate_tokens",
    "json_text",
    "new_call_id",
    "reply_text",
    "split_reasoning",
    "think_text",
    "tool_call_text",
]

FinishReason = Literal["stop", "length", "abort"]
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_REPLY_TAIL = "This is a deterministic reply from the SGLang stand-in."
_MAX_ECHO_WORDS = 64


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


def plan_call(name: str, parameters: Mapping[str, Any] | None) -> PlannedCall:
    """Plan a call of tool *name* with arguments valid for its *parameters* schema."""
    schema: Mapping[str, Any] = parameters or {"type": "object", "properties": {}}
    return PlannedCall(name=name, arguments=json.dumps(example_for_schema(schema)))


@dataclass
class Generation:
    """The result of decoding: ids (EOS included), text pieces per id and how it ended."""

    token_ids: list[int]
    pieces: list[str]
    text: str
    finish_reason: FinishReason
    matched_stop: int | str | None

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
) -> Generation:
    """Decode *candidate* token by token, like a sampler that always picks it.

    Stops at a stop string (text cut before it), a stop token id, EOS (after the
    candidate, unless *ignore_eos*: then the candidate repeats), *max_new_tokens*
    ("length") or when the context has no *room* left ("length").
    """
    limit = room if max_new_tokens is None else min(max_new_tokens, room)
    limit = max(limit, 0)
    base = tok.split(candidate) or [" ."]
    ids: list[int] = []
    pieces: list[str] = []
    text = ""
    stops = [s for s in stop if s]
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
    """Turns growing raw model text into reasoning/content/tool-argument deltas."""

    separate_reasoning: bool
    reasoning: bool
    call: PlannedCall | None
    sent_reasoning: str = ""
    sent_content: str = ""
    sent_args: str = ""
    call_started: bool = False

    def feed(self, raw: str, *, final: bool) -> tuple[str, str, str | None, str]:
        """Return ``(reasoning_delta, content_delta, call_name_if_started_now, args_delta)``."""
        if self.reasoning and self.separate_reasoning:
            reasoning, content = split_reasoning(raw, final=final)
        else:
            reasoning, content = "", raw
        r_delta = reasoning[len(self.sent_reasoning) :] if reasoning.startswith(self.sent_reasoning) else ""
        self.sent_reasoning = (
            reasoning if r_delta or reasoning == self.sent_reasoning else self.sent_reasoning
        )
        if self.call is None:
            c_delta = content[len(self.sent_content) :]
            self.sent_content = content
            return r_delta, c_delta, None, ""
        prefix = f'<tool_call>\n{{"name": {json.dumps(self.call.name)}, "arguments": '
        started: str | None = None
        a_delta = ""
        if len(content) >= len(prefix) and not self.call_started:
            self.call_started = True
            started = self.call.name
        if self.call_started:
            args = content[len(prefix) : len(prefix) + len(self.call.arguments)]
            a_delta = args[len(self.sent_args) :]
            self.sent_args = args
        return r_delta, "", started, a_delta
