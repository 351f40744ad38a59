"""Tool calls in the wire format of each ``--tool-call-parser``, as SGLang 0.5.23 parses them.

The stand-in's "model" writes its tool calls the way the model family behind the parser
does, so SGLang's own detector (``sglang/srt/function_call/*_detector.py``) extracts
exactly the calls the stand-in reports. Each format function renders the calls and
says, per call, where its arguments sit in the text and when SGLang's streaming parser
lets the call out:

- ``qwen``/``qwen25`` (and no parser, the Qwen2.5 model's own form), ``hermes``,
  ``llama3``, ``kimi_k2``: the name as soon as it is complete, then the arguments as
  they grow (``kimi_k2`` sends its first fragment with the name);
- ``mistral`` (the ``[TOOL_CALLS]name[ARGS]{…}`` form), ``deepseekv3``: each call once
  its arguments are complete (name, then the whole arguments);
- ``pythonic``, ``gpt-oss``: each call in one delta, name and arguments together, once
  its closing bracket / ``<|call|>`` arrives.

Arguments are written in their canonical JSON (``json.dumps(…, ensure_ascii=False)``),
which is what the JSON-reading parsers re-serialize to, so what is streamed adds up to
what a non-streamed answer holds. A parser name SGLang knows but that has no format
here writes the Qwen form (its answers then differ from SGLang's; see docs/testing.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "FORMATS",
    "PARSER_NAMES",
    "CallSpan",
    "Rendered",
    "ToolCall",
    "call_id",
    "canonical_arguments",
    "render",
]

#: ``--tool-call-parser`` choices of SGLang 0.5.23 (``parser_names.TOOL_CALL_PARSER_NAMES``).
PARSER_NAMES: tuple[str, ...] = (
    "apertus2509", "beam", "cohere_command4", "deepseekv3", "deepseekv31", "deepseekv32",
    "deepseekv4", "deepseekv41", "dots", "glm", "glm45", "glm47", "gpt-oss", "k2_horizon",
    "kimi_k2", "kimi_k3", "lfm2", "ling3", "llama3", "mimo", "minicpm5", "mistral", "muse",
    "poolside_v1", "pythonic", "qwen", "qwen25", "qwen3_coder", "spark25", "step3", "step3p5",
    "minimax-m2", "minimax-m3", "nanbeige", "trinity", "interns1", "hermes", "hunyuan",
    "gigachat3", "gigachat35", "gemma4", "inkling", "iquest_q1", "response_template",
)  # fmt: skip


class ToolCall(Protocol):
    """What a format needs of a planned call."""

    @property
    def name(self) -> str: ...

    @property
    def arguments(self) -> str: ...


@dataclass(frozen=True)
class CallSpan:
    """Where one call sits in the rendered text (offsets into it)."""

    announce: int  # text length at which the streaming parser first lets the call out
    args_start: int
    args_end: int
    whole: bool = False  # the arguments come out in one piece at ``announce``


@dataclass(frozen=True)
class Rendered:
    """Tool calls as the model writes them, and what SGLang's parser makes of them."""

    text: str
    spans: tuple[CallSpan, ...]
    arguments: tuple[str, ...]  # each call's ``function.arguments`` on the wire
    with_name: bool = False  # the streamed name delta carries the arguments seen so far
    dropped: frozenset[int] = frozenset()  # calls SGLang's parser skips (not reported)


def canonical_arguments(arguments: str) -> str:
    """*arguments* as SGLang's JSON-reading parsers re-serialize them."""
    return json.dumps(json.loads(arguments), ensure_ascii=False)


class _Builder:
    """Appends text and records each call's arguments span."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: list[CallSpan] = []

    def add(self, text: str) -> None:
        self.text += text

    def call(self, before: str, arguments: str, after: str, *, announce_after: str | None = None,
             whole: bool = False) -> None:  # fmt: skip
        """Add ``before + arguments + after``; announce at the arguments' start, or once
        *announce_after* (a prefix of *after*) has followed them."""
        self.text += before
        start = len(self.text)
        self.text += arguments
        end = len(self.text)
        self.text += after
        announce = start if announce_after is None else end + len(announce_after)
        self.spans.append(CallSpan(announce, start, end, whole))


def _json_calls(calls: Sequence[ToolCall]) -> list[str]:
    return [canonical_arguments(c.arguments) for c in calls]


def _qwen25(calls: Sequence[ToolCall], history: int) -> Rendered:
    """``<tool_call>\\n{"name": …, "arguments": …}\\n</tool_call>``, one block a line."""
    out, args = _Builder(), _json_calls(calls)
    for i, (call, arguments) in enumerate(zip(calls, args, strict=True)):
        out.add("\n" if i else "")
        out.call(
            f'<tool_call>\n{{"name": {json.dumps(call.name)}, "arguments": ', arguments, "}\n</tool_call>"
        )
    return Rendered(out.text, tuple(out.spans), tuple(args))


def _hermes(calls: Sequence[ToolCall], history: int) -> Rendered:
    """``<tool_call>{"name": …, "arguments": …}</tool_call>`` (HermesDetector's form), back
    to back: a newline between blocks would reach the client as content when streamed."""
    out, args = _Builder(), _json_calls(calls)
    for call, arguments in zip(calls, args, strict=True):
        out.call(f'<tool_call>{{"name": {json.dumps(call.name)}, "arguments": ', arguments, "}</tool_call>")
    return Rendered(out.text, tuple(out.spans), tuple(args))


def _llama3(calls: Sequence[ToolCall], history: int) -> Rendered:
    """``<|python_tag|>{"name": …, "parameters": …}``, parallel calls joined by ``;``."""
    out, args = _Builder(), _json_calls(calls)
    out.add("<|python_tag|>")
    for i, (call, arguments) in enumerate(zip(calls, args, strict=True)):
        out.call(f'{";" if i else ""}{{"name": {json.dumps(call.name)}, "parameters": ', arguments, "}")
    return Rendered(out.text, tuple(out.spans), tuple(args))


def _mistral(calls: Sequence[ToolCall], history: int) -> Rendered:
    """``[TOOL_CALLS]name[ARGS]{…}`` per call (the compact form of current Mistral models)."""
    out, args = _Builder(), _json_calls(calls)
    for call, arguments in zip(calls, args, strict=True):
        out.call(f"[TOOL_CALLS]{call.name}[ARGS]", arguments, "", announce_after="", whole=True)
    return Rendered(out.text, tuple(out.spans), tuple(args))


def _ds(name: str) -> str:
    """A DeepSeek special token: fullwidth bars, words joined by U+2581."""
    return "<\uff5c" + name.replace(" ", "\u2581") + "\uff5c>"


_DS_BEGIN, _DS_END = _ds("tool calls begin"), _ds("tool calls end")
_DS_CALL, _DS_CALL_END, _DS_SEP = _ds("tool call begin"), _ds("tool call end"), _ds("tool sep")


def _deepseekv3(calls: Sequence[ToolCall], history: int) -> Rendered:
    """DeepSeek-V3's ``function`` + tool-sep token + name, then fenced JSON arguments; calls
    back to back (a newline between them would be streamed to the client as content)."""
    out, args = _Builder(), _json_calls(calls)
    out.add(_DS_BEGIN)
    for call, arguments in zip(calls, args, strict=True):
        before = f"{_DS_CALL}function{_DS_SEP}{call.name}\n```json\n"
        out.call(before, arguments, f"\n```{_DS_CALL_END}", announce_after="\n```", whole=True)
    out.add(_DS_END)
    return Rendered(out.text, tuple(out.spans), tuple(args))


def _python_literal(value: Any) -> str:
    """A JSON value as the Python literal a pythonic model writes."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_python_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_python_literal(v) for v in value) + "]"
    return repr(value)  # str, int, float, bool, None


def _negative(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_negative(v) for v in value.values())
    if isinstance(value, list):
        return any(_negative(v) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool) and value < 0


def _pythonic(calls: Sequence[ToolCall], history: int) -> Rendered:
    """``[name(key=value, …), …]`` (Llama 4 / pythonic), all calls out at the ``]``.

    A negative number is written ``-3``, which PythonicDetector does not take for a
    literal: it skips that call (the others stay, streamed under their list positions).
    """
    args = _json_calls(calls)
    parts = []
    dropped = frozenset(i for i, call in enumerate(calls) if _negative(json.loads(call.arguments)))
    for call in calls:
        values = json.loads(call.arguments)
        keywords = values.items() if isinstance(values, Mapping) else ()
        parts.append(f"{call.name}(" + ", ".join(f"{k}={_python_literal(v)}" for k, v in keywords) + ")")
    text = "[" + ", ".join(parts) + "]"
    spans = tuple(CallSpan(len(text), len(text), len(text), whole=True) for _ in calls)
    return Rendered(text, spans, tuple(args), with_name=True, dropped=dropped)


def _kimi_k2(calls: Sequence[ToolCall], history: int) -> Rendered:
    """Kimi-K2's section of ``functions.name:index`` calls (arguments kept verbatim)."""
    out, args = _Builder(), _json_calls(calls)
    out.add("<|tool_calls_section_begin|>")
    for i, (call, arguments) in enumerate(zip(calls, args, strict=True)):
        head = f"<|tool_call_begin|>functions.{call.name}:{history + i}<|tool_call_argument_begin|>"
        out.call(head, arguments, "<|tool_call_end|>")
    out.add("<|tool_calls_section_end|>")
    return Rendered(out.text, tuple(out.spans), tuple(args), with_name=True)


def _gpt_oss(calls: Sequence[ToolCall], history: int) -> Rendered:
    """Harmony ``commentary to=functions.name`` messages, each out at its ``<|call|>``."""
    out, args = _Builder(), _json_calls(calls)
    for call, arguments in zip(calls, args, strict=True):
        head = (
            f"<|start|>assistant<|channel|>commentary to=functions.{call.name} <|constrain|>json<|message|>"
        )
        out.call(head, arguments, "<|call|>", announce_after="<|call|>", whole=True)
    return Rendered(out.text, tuple(out.spans), tuple(args), with_name=True)


Formatter = Callable[[Sequence[ToolCall], int], Rendered]

#: Wire format per ``--tool-call-parser`` name (``auto`` resolves to Qwen2.5's own).
FORMATS: dict[str, Formatter] = {
    "qwen": _qwen25,
    "qwen25": _qwen25,
    "auto": _qwen25,
    "hermes": _hermes,
    "llama3": _llama3,
    "mistral": _mistral,
    "deepseekv3": _deepseekv3,
    "pythonic": _pythonic,
    "kimi_k2": _kimi_k2,
    "gpt-oss": _gpt_oss,
}


def render(parser: str | None, calls: Sequence[ToolCall], history: int = 0) -> Rendered:
    """The raw text of *calls* under *parser* (None: the model's own Qwen form).

    *history* is the number of tool calls in earlier assistant turns (Kimi-K2 counts on).
    """
    return FORMATS.get(parser or "qwen25", _qwen25)(calls, history)


def call_id(parser: str | None, name: str, position: int, history: int, default: str) -> str:
    """The ``id`` serving_chat gives call *position* (*default*: its ``call_<24 hex>``)."""
    if parser == "kimi_k2":
        return f"functions.{name}:{history + position}"
    if parser == "kimi_k3":
        return f"{name}:{history + position}"
    return default
