"""Request building and checking, done before any I/O.

Messages, tools and ``response_format`` are checked here so that a malformed request fails
with :class:`~sglang_backend.errors.InvalidRequestError` naming the culprit, instead of an
HTTP 400 after a server launch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import openai
from pydantic import BaseModel

from .errors import InvalidRequestError

__all__ = [
    "build_response_format",
    "check_constraints",
    "check_encodable",
    "check_messages",
    "check_regex",
    "check_tools",
]

_ROLES = frozenset({"system", "user", "assistant", "tool", "function", "developer"})
# Content part types SGLang's ChatCompletionRequest accepts (it rejects "file" and "refusal");
# thinking parts only in assistant messages.
_PART_TYPES = frozenset({"text", "image_url", "video_url", "audio_url", "input_audio"})
_ASSISTANT_PART_TYPES = _PART_TYPES | {"thinking", "reasoning"}


def check_regex(pattern: object, where: str) -> None:
    """Raise InvalidRequestError unless *pattern* (a string or list of them) compiles.

    Python's ``re`` is the judge: SGLang compiles ``stop_regex`` with it, and its
    grammar backends (xgrammar, llguidance, outlines) accept a subset of its syntax for
    ``regex``, so a pattern ``re`` rejects would fail on the server too (after I/O).
    """
    patterns = pattern if isinstance(pattern, (list, tuple)) else [pattern]
    for index, item in enumerate(patterns):
        name = where if len(patterns) == 1 and not isinstance(pattern, (list, tuple)) else f"{where}[{index}]"
        if not isinstance(item, str):
            raise InvalidRequestError(f"{name} must be a string, got {type(item).__name__}")
        try:
            re.compile(item)
        except re.error as exc:
            raise InvalidRequestError(f"{name} is not a valid regular expression: {exc}") from None


def check_constraints(
    response_format: Mapping[str, Any] | None, regex: str | None, ebnf: str | None
) -> None:
    """Raise InvalidRequestError if more than one output constraint is set.

    SGLang applies one of ``json_schema`` (a ``json_schema``/``json_object``
    ``response_format``), ``regex`` and ``ebnf`` and answers 400 "Only one of regex,
    json_schema, or ebnf can be set." otherwise; this says so before any I/O, e.g. for a
    per-call ``response_format`` on a model configured with ``regex``.
    """
    kind = response_format.get("type") if response_format is not None else None
    constrained = kind in {"json_schema", "json_object"}
    named = [name for name, on in (("response_format", constrained), ("regex", regex is not None),
                                   ("ebnf", ebnf is not None)) if on]  # fmt: skip
    if len(named) > 1:
        raise InvalidRequestError(
            f"only one of {', '.join(named)} may be set: SGLang applies a single output constraint"
        )


def check_encodable(value: object, where: str) -> None:
    """Raise InvalidRequestError if a string in ``value`` (keys too) is not valid UTF-8 text.

    Lone surrogates (``"\\ud800"``, from a bad decode or ``surrogateescape``) cannot be sent as
    JSON to the server; without this check they surface as a bare UnicodeEncodeError deep in
    the HTTP stack, after a server launch.
    """
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidRequestError(
                    f"{where} contains text that cannot be encoded as UTF-8 "
                    f"({exc.reason} {value[exc.start:exc.end]!r} at index {exc.start}); "
                    "fix the decoding that produced it"
                ) from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_encodable(key, f"{where} key")
            check_encodable(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_encodable(item, f"{where}[{index}]")


def _as_mapping(message: object, index: int) -> Mapping[str, Any]:
    if isinstance(message, Mapping):
        return message
    if isinstance(message, BaseModel):
        dumped: dict[str, Any] = message.model_dump(exclude_none=True)
        return dumped
    raise InvalidRequestError(
        f"messages[{index}] must be a dict like {{'role': 'user', 'content': '...'}}, "
        f"got {type(message).__name__}"
    )


def check_messages(messages: object) -> list[Mapping[str, Any]]:
    """Validate OpenAI-format messages; return them as a list of mappings (not copied)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Iterable):
        raise InvalidRequestError(
            "messages must be a list of message dicts, got " + type(messages).__name__
        )
    checked = [_as_mapping(m, i) for i, m in enumerate(messages)]
    if not checked:
        raise InvalidRequestError("messages must not be empty")
    for index, message in enumerate(checked):
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            allowed = ", ".join(sorted(_ROLES))
            problem = "has no 'role'" if role is None else f"has unknown role {role!r}"
            raise InvalidRequestError(f"messages[{index}] {problem}; allowed roles: {allowed}")
        content = message.get("content")
        if content is None:
            if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
                continue
            raise InvalidRequestError(f"messages[{index}] ({role}) has no 'content'")
        if isinstance(content, str):
            pass
        elif isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
            kinds = _ASSISTANT_PART_TYPES if role == "assistant" else _PART_TYPES
            for part_index, part in enumerate(content):
                kind = part.get("type") if isinstance(part, Mapping) else None
                if not isinstance(kind, str) or kind not in kinds:
                    raise InvalidRequestError(
                        f"messages[{index}].content[{part_index}] must be a content part dict "
                        f"with a 'type' among {', '.join(sorted(kinds))}"
                    )
                if part.get("type") == "text" and not isinstance(part.get("text"), str):
                    raise InvalidRequestError(
                        f"messages[{index}].content[{part_index}] text part needs a string 'text'"
                    )
        else:
            raise InvalidRequestError(
                f"messages[{index}].content must be a string or a list of content parts, "
                f"got {type(content).__name__}"
            )
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise InvalidRequestError(f"messages[{index}] (tool) needs a string 'tool_call_id'")
        check_encodable(message, f"messages[{index}]")
    return checked


def _tool_from(tool: object, index: int) -> Mapping[str, Any]:
    if isinstance(tool, type) and issubclass(tool, BaseModel):
        converted: Mapping[str, Any] = openai.pydantic_function_tool(tool)
        return converted
    if not isinstance(tool, Mapping):
        raise InvalidRequestError(
            f"tools[{index}] must be an OpenAI tool dict or a pydantic model class, "
            f"got {type(tool).__name__}"
        )
    if tool.get("type", "function") != "function":
        raise InvalidRequestError(f"tools[{index}] has type {tool.get('type')!r}; only 'function'")
    function = tool.get("function")
    if not isinstance(function, Mapping):
        raise InvalidRequestError(f"tools[{index}] needs a 'function' dict")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"tools[{index}].function needs a non-empty string 'name'")
    parameters = function.get("parameters")
    if parameters is not None and (
        not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object"
    ):
        raise InvalidRequestError(
            f"tools[{index}] ({name}): 'parameters' must be a JSON schema object "
            "({'type': 'object', 'properties': {...}})"
        )
    return tool if "type" in tool else {"type": "function", **tool}


def check_tools(tools: object) -> list[Mapping[str, Any]] | None:
    """Validate tools (dicts or pydantic model classes); None or [] means no tools."""
    if tools is None:
        return None
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Iterable):
        raise InvalidRequestError(f"tools must be a list, got {type(tools).__name__}")
    checked = [_tool_from(tool, i) for i, tool in enumerate(tools)]
    for index, tool in enumerate(checked):
        check_encodable(tool, f"tools[{index}]")
    names = [t["function"]["name"] for t in checked]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidRequestError(f"duplicate tool names: {', '.join(duplicates)}")
    return checked or None


def build_response_format(
    response_format: object,
) -> tuple[dict[str, Any] | None, type[BaseModel] | None]:
    """Return (the wire ``response_format``, the pydantic model to parse into or None)."""
    wire, model = _build_response_format(response_format)
    check_encodable(wire, "response_format")
    return wire, model


def _build_response_format(
    response_format: object,
) -> tuple[dict[str, Any] | None, type[BaseModel] | None]:
    if response_format is None:
        return None, None
    if isinstance(response_format, type) and issubclass(response_format, BaseModel):
        # The SDK's own strict schema conversion, reached through its public helper.
        tool = openai.pydantic_function_tool(response_format)
        schema = tool["function"].get("parameters", {})
        return (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": response_format.__name__,
                    "schema": schema,
                    "strict": True,
                },
            },
            response_format,
        )
    if isinstance(response_format, Mapping):
        kind = response_format.get("type")
        if kind in ("text", "json_object"):
            return dict(response_format), None
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
                raise InvalidRequestError(
                    "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}"
                )
            return dict(response_format), None
        raise InvalidRequestError(
            f"response_format type {kind!r} is not one of 'text', 'json_object', 'json_schema'"
        )
    raise InvalidRequestError(
        "response_format must be a pydantic model class or an OpenAI response_format dict, "
        f"got {type(response_format).__name__}"
    )
