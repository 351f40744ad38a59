"""The ``/v1/responses`` request as SGLang 0.5.23 accepts it, and its input turned into chat.

``ResponsesRequest`` keeps the fields SGLang's model declares (unknown ones ignored) with its
defaults: ``store`` true, ``tool_choice`` "auto", ``parallel_tool_calls`` true,
``truncation`` "disabled", ``request_id`` ``resp_<32 hex>``. :func:`chat_messages` is
serving_responses' ``_construct_input_messages``: instructions first, developer turns
labelled and folded into one leading system message, ``function_call`` /
``function_call_output`` / ``reasoning`` items as assistant and tool turns, consecutive
assistant turns merged, any other item type a ValueError.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ECHOABLE_EFFORTS", "ResponseTool", "ResponsesRequest", "chat_messages", "drop_none"]

ECHOABLE_EFFORTS = frozenset({"minimal", "low", "medium", "high"})
_DEVELOPER_LABEL = "Developer instructions:"
_TOOL_TYPES = Literal[
    "function", "web_search", "web_search_preview", "code_interpreter", "file_search",
    "image_generation", "computer_use_preview", "local_shell", "shell", "mcp", "custom",
    "namespace", "tool_search",
]  # fmt: skip
_INCLUDES = Literal[
    "code_interpreter_call.outputs", "computer_call_output.output.image_url",
    "file_search_call.results", "message.input_image.image_url", "message.output_text.logprobs",
    "reasoning.encrypted_content",
]  # fmt: skip


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, protected_namespaces=())


class ResponseTool(BaseModel):
    """A tool of the request (other keys kept, as SGLang's ``extra="allow"``)."""

    model_config = ConfigDict(extra="allow")

    type: _TOOL_TYPES
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool = False
    tools: list[dict[str, Any]] | None = None
    defer_loading: bool | None = None
    format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _function_named(self) -> ResponseTool:
        if self.type == "function" and not self.name:
            raise ValueError("Function tools must include a name.")
        return self


class ReasoningParam(_Model):
    """``reasoning``: effort tier and summary opt-in."""

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "ultra", "max"] | None = "medium"
    summary: Literal["auto", "concise", "detailed"] | None = None


class TextFormat(_Model):
    """``text.format``: ``text``, ``json_object`` or ``json_schema`` (name and schema)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_complete(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("json_schema format needs 'name' and 'schema'")
        return self


class TextConfig(_Model):
    """``text``."""

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(_Model):
    """Request body of ``POST /v1/responses``."""

    background: bool | None = False
    include: list[_INCLUDES] | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    metadata: dict[str, Any] | None = None
    model: str | None = None
    parallel_tool_calls: bool | None = True
    previous_response_id: str | None = None
    reasoning: ReasoningParam | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] = "auto"
    store: bool | None = True
    stream: bool | None = False
    temperature: float | None = None
    text: TextConfig | None = None
    tool_choice: Literal["auto", "required", "none"] | dict[str, Any] = "auto"
    tools: list[ResponseTool] = Field(default_factory=list)
    top_logprobs: int | None = 0
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] | None = "disabled"
    user: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    request_id: str = Field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: str | list[str] | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _effort_none(cls, values: Any) -> Any:
        """``reasoning.effort == "none"`` turns thinking off (both template keys)."""
        reasoning = values.get("reasoning") if isinstance(values, dict) else None
        if isinstance(reasoning, dict) and reasoning.get("effort") == "none":
            existing = values.get("chat_template_kwargs")
            existing = existing if isinstance(existing, dict) else {}
            values = {**values, "chat_template_kwargs": {"thinking": False, "enable_thinking": False,
                                                             **existing}}  # fmt: skip
        return values

    @model_validator(mode="before")
    @classmethod
    def _replayed_ids(cls, values: Any) -> Any:
        """An output item replayed as input drops its ``id`` (SGLang resolves no item ids)."""
        if isinstance(values, dict) and isinstance(values.get("input"), list):
            values = {**values, "input": [_without_id(item) for item in values["input"]]}
        return values

    def effective_tool_choice(self) -> str | dict[str, Any]:
        """``tool_choice`` as the server honours it: a named function/custom tool, else a string."""
        choice = self.tool_choice
        if not isinstance(choice, dict):
            return choice
        name = choice.get("name") or (choice.get("function") or {}).get("name")
        if choice.get("type") in ("function", "custom") and name:
            return {"type": choice["type"], "name": name}
        return "auto"

    def wants_logprobs(self) -> bool:
        """``include`` asks for the output text's logprobs."""
        return bool(self.include and "message.output_text.logprobs" in self.include)

    def json_schema(self) -> str | None:
        """``text.format`` as a JSON-schema constraint (None for plain text)."""
        fmt = self.text.format if self.text is not None else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return '{"type": "object"}'
        return json.dumps(fmt.schema_)

    def history(self, previous: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
        """The stored conversation before this turn plus this turn's input items."""
        items = [dict(item) for item in previous]
        if isinstance(self.input, str):
            items.append({"role": "user", "content": self.input})
        else:
            items.extend(self.input)
        return items


def _without_id(item: Any) -> Any:
    if isinstance(item, dict) and isinstance(item.get("id"), str) and item.get("content") is not None:
        return {k: v for k, v in item.items() if k != "id"}
    return item


def drop_none(value: Any) -> Any:
    """``model_dump(exclude_none=True)`` of a plain JSON value."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value]
    return value


def _part(part: Any) -> Any:
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image":
        url = part.get("image_url")
        return {"type": "image_url", "image_url": url if isinstance(url, dict) else {"url": url}}
    return part


def _call_message(item: Mapping[str, Any], name: Any, arguments: str) -> dict[str, Any]:
    call = {"id": item.get("call_id") or item.get("id"), "type": "function",
            "function": {"name": name, "arguments": arguments}}  # fmt: skip
    return {"role": "assistant", "tool_calls": [call]}


def _arguments(raw: Any) -> str:
    """A call's ``arguments`` as a JSON-object string (``{}`` when it is not one)."""
    if isinstance(raw, dict):
        return json.dumps(raw)
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return raw
    return "{}"


def _message(item: Mapping[str, Any]) -> dict[str, Any] | None:
    """One input item as a chat message (None: an empty reasoning item, dropped)."""
    if item.get("role") == "developer":
        content = item.get("content")
        if isinstance(content, str):
            content = f"{_DEVELOPER_LABEL}\n{content}"
        item = {**item, "role": "system", "content": content}
    kind = item.get("type")
    if kind in ("function_call", "custom_tool_call"):
        raw = (
            item.get("arguments")
            if kind == "function_call"
            else json.dumps({"input": item.get("input") or ""})
        )
        return _call_message(item, item.get("name"), _arguments(raw))
    if kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output", "")
        if isinstance(output, list):
            output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
        return {"role": "tool", "tool_call_id": item.get("call_id"), "content": output}
    if kind == "reasoning":
        texts = [str(e["text"]) for e in item.get("summary") or [] if isinstance(e, dict) and e.get("text")]
        texts = texts or [
            str(e["text"]) for e in item.get("content") or [] if isinstance(e, dict) and e.get("text")
        ]
        return {"role": "assistant", "reasoning_content": "\n".join(texts)} if texts else None
    if kind not in (None, "message"):
        raise ValueError(f"Unsupported Responses API input item type: {kind!r}")
    content = item.get("content")
    if isinstance(content, list):
        content = [_part(p) for p in content]
    out = {
        k: v
        for k, v in {**item, "content": content}.items()
        if v is not None and k not in ("id", "status", "type")
    }
    return out


def _as_parts(content: Any) -> list[Any]:
    if isinstance(content, list):
        return list(content)
    return [{"type": "text", "text": content}] if isinstance(content, str) and content else []


def _merge_assistant(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for msg in messages:
        prev = merged[-1] if merged else None
        if (
            prev is not None and msg.get("role") == "assistant" and prev.get("role") == "assistant"
            and (prev.get("phase") == msg.get("phase") or set(prev) == {"role", "reasoning_content"})
        ):  # fmt: skip
            new = msg.get("content")
            old = prev.get("content")
            if new not in (None, ""):
                if old in (None, ""):
                    prev["content"] = new
                elif isinstance(old, str) and isinstance(new, str):
                    prev["content"] = old + "\n\n" + new
                else:
                    prev["content"] = _as_parts(old) + _as_parts(new)
            if msg.get("tool_calls"):
                prev["tool_calls"] = list(prev.get("tool_calls") or []) + list(msg["tool_calls"])
            if msg.get("reasoning_content"):
                before = prev.get("reasoning_content")
                prev["reasoning_content"] = (
                    f"{before}\n{msg['reasoning_content']}" if before else msg["reasoning_content"]
                )
            continue
        merged.append(dict(msg))
    return merged


def chat_messages(instructions: str | None, history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages SGLang renders for a Responses request (raises ValueError)."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in history:
        message = _message(item)
        if message is not None:
            messages.append(message)
    messages = _merge_assistant(messages)
    system: list[str] = []
    rest: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") != "system":
            rest.append(message)
            continue
        content = message.get("content")
        if isinstance(content, str):
            system.append(content)
        elif isinstance(content, list):
            system += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return ([{"role": "system", "content": "\n\n".join(system)}] if system else []) + rest
