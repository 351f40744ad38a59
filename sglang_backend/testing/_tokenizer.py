"""A deterministic toy tokenizer and a Qwen-like chat template.

Tokens are pieces of text (a word or punctuation mark with its leading whitespace, or a
special token such as ``<|im_end|>``), so joining the pieces gives the text back.  A
piece's id is a stable hash (BLAKE2b, not Python's salted ``hash``) into a 151,643-entry
vocabulary; the special tokens have Qwen2's ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

__all__ = [
    "BOS_TEXT",
    "EOS_ID",
    "EOS_TEXT",
    "SPECIAL_TOKENS",
    "VOCAB_SIZE",
    "content_text",
    "decode",
    "encode",
    "render_chat",
    "split",
]

VOCAB_SIZE = 151_643
EOS_TEXT = "<|im_end|>"
BOS_TEXT = "<|im_start|>"
SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 151_643,
    "<|im_start|>": 151_644,
    "<|im_end|>": 151_645,
}
EOS_ID = SPECIAL_TOKENS[EOS_TEXT]
_SPECIAL_BY_ID = {value: key for key, value in SPECIAL_TOKENS.items()}
# special tokens are one piece each: ``<|name|>`` and DeepSeek's fullwidth-bar (U+FF5C) form
_SPECIAL = r"<\|[A-Za-z_]+\|>|<\uff5c[^\uff5c\s]+\uff5c>"
_PIECE = re.compile(rf"{_SPECIAL}|\s*\w+|\s*(?!{_SPECIAL})[^\w\s]|\s+")
_known: dict[int, str] = {}


@lru_cache(maxsize=65536)
def _piece_id(piece: str) -> int:
    """Map one piece of text to its token id (stable across processes)."""
    special = SPECIAL_TOKENS.get(piece)
    if special is not None:
        return special
    digest = hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest()
    token = int.from_bytes(digest, "little") % VOCAB_SIZE
    _known.setdefault(token, piece)
    return token


def split(text: str) -> list[str]:
    """Split *text* into token pieces; ``"".join(split(t)) == t``."""
    return _PIECE.findall(text)


def encode(text: str) -> list[int]:
    """Return the token ids of *text*."""
    return [_piece_id(piece) for piece in _PIECE.findall(text)]


def decode(ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
    """Return the text of *ids*; ids never produced by this process decode to ``<|id|>``."""
    out: list[str] = []
    for token in ids:
        special = _SPECIAL_BY_ID.get(token)
        if special is not None:
            if not skip_special_tokens:
                out.append(special)
            continue
        out.append(_known.get(token, f"<|{token}|>"))
    return "".join(out)


def content_text(content: Any) -> str:
    """Flatten an OpenAI message ``content`` (string, parts list or None) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces: list[str] = []
    if isinstance(content, Sequence):
        for part in content:
            part_dict = part if isinstance(part, Mapping) else _as_dict(part)
            kind = part_dict.get("type")
            if kind == "text":
                pieces.append(str(part_dict.get("text") or ""))
            elif kind in {"image_url", "image"}:
                pieces.append("<|vision_start|><|image_pad|><|vision_end|>")
            elif kind in {"video_url", "video"}:
                pieces.append("<|vision_start|><|video_pad|><|vision_end|>")
            elif kind in {"audio_url", "input_audio", "audio"}:
                pieces.append("<|audio_bos|><|AUDIO|><|audio_eos|>")
    return "".join(pieces)


def _as_dict(obj: Any) -> Mapping[str, Any]:
    """Return a mapping view of a pydantic model or mapping."""
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        result = dump()
        if isinstance(result, Mapping):
            return result
    return {}


def _tool_call_text(call: Mapping[str, Any]) -> str:
    """Render one assistant tool call the Qwen way."""
    function = call.get("function") or {}
    arguments: Any = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    payload = json.dumps({"name": function.get("name"), "arguments": arguments})
    return f"<tool_call>\n{payload}\n</tool_call>"


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> str:
    """Render chat *messages* (plain dicts) with a Qwen2.5-like template."""
    parts: list[str] = []
    rest = list(messages)
    system = ""
    if rest and rest[0].get("role") in {"system", "developer"}:
        system = content_text(rest[0].get("content"))
        rest = rest[1:]
    if tools:
        listing = "\n".join(json.dumps(tool, sort_keys=True) for tool in tools)
        system = (
            (system or "You are a helpful assistant.")
            + "\n\n# Tools\n\nYou may call one or more functions to assist with the user query."
            + "\n\n<tools>\n"
            + listing
            + "\n</tools>\n\nFor each function call, return a json object with function name"
            + " and arguments within <tool_call></tool_call> XML tags."
        )
    if system:
        parts.append(f"{BOS_TEXT}system\n{system}{EOS_TEXT}\n")
    for index, message in enumerate(rest):
        role = str(message.get("role"))
        text = content_text(message.get("content"))
        last = index == len(rest) - 1
        if role in {"tool", "function"}:
            parts.append(f"{BOS_TEXT}user\n<tool_response>\n{text}\n</tool_response>{EOS_TEXT}\n")
            continue
        if role == "assistant":
            calls = message.get("tool_calls") or []
            rendered = [text] if text else []
            rendered.extend(_tool_call_text(_as_mapping(call)) for call in calls)
            body = "\n".join(rendered)
            if last and continue_final_message:
                parts.append(f"{BOS_TEXT}assistant\n{body}")
                continue
            parts.append(f"{BOS_TEXT}assistant\n{body}{EOS_TEXT}\n")
            continue
        if role == "developer":
            role = "system"
        parts.append(f"{BOS_TEXT}{role}\n{text}{EOS_TEXT}\n")
    if add_generation_prompt and not continue_final_message:
        parts.append(f"{BOS_TEXT}assistant\n")
    return "".join(parts)


def _as_mapping(obj: Any) -> Mapping[str, Any]:
    """Return *obj* if it is a mapping, else its pydantic dump."""
    if isinstance(obj, Mapping):
        return obj
    return _as_dict(obj)
