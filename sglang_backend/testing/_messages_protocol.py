"""Anthropic's Messages request as SGLang 0.5.23 accepts it, and its translation to chat.

The models keep SGLang's fields and checks (``anthropic/protocol.py``): content blocks and
tools discriminated by ``type``, ``max_tokens`` positive, ``thinking`` shaped like the
SDK's three variants. :func:`chat_body` is ``AnthropicServing._convert_to_chat_completion_request``:
system text (the field and inline system turns) first, ``tool_result`` blocks as tool
messages, ``tool_use`` as assistant tool calls, ``thinking`` history as
``reasoning_content``, server tools dropped, ``tool_choice`` any → required, tool → named,
``output_config.format`` → a ``json_schema`` response format.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, NonNegativeInt, Tag, field_validator, model_validator

__all__ = ["CountTokensRequest", "MessagesRequest", "chat_body", "validation_digest"]


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ImageBlock(BaseModel):
    type: Literal["image"] = "image"
    source: dict[str, Any] | str | None = None


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolReferenceBlock(BaseModel):
    type: Literal["tool_reference"] = "tool_reference"
    name: str | None = None
    tool_name: str | None = None
    id: str | None = None


class SearchResultBlock(BaseModel):
    type: Literal["search_result"] = "search_result"
    source: str | dict[str, Any] | None = None
    title: str | None = None
    content: list[dict[str, Any]] | None = None


class ThinkingBlock(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(BaseModel):
    type: Literal["redacted_thinking"] = "redacted_thinking"
    data: str | None = None


class ToolResultBlock(BaseModel):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str | None = None
    id: str | None = None
    content: str | list[ContentBlock] | None = None
    is_error: bool | None = None


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ToolReferenceBlock | SearchResultBlock
    | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]  # fmt: skip
ToolResultBlock.model_rebuild()


class Message(BaseModel):
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class CustomTool(BaseModel):
    """A tool the user defines (``type`` absent or ``custom``)."""

    type: Literal["custom"] | None = None
    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    strict: bool = False
    defer_loading: bool | None = None

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "type" not in value:
            value["type"] = "object"
        return value


class ServerTool(BaseModel):
    """Anthropic's built-in tools (``web_search_YYYYMMDD``, ``computer_…``, ``bash_…``, ``text_editor_…``)."""

    type: str = Field(pattern=r"^(web_search|computer|bash|text_editor)_\d{8}$")
    name: str | None = None
    description: str | None = None


def _tool_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if (
        kind
        and kind != "custom"
        and str(kind).startswith(("web_search_", "computer_", "bash_", "text_editor_"))
    ):
        return "server"
    return "custom"


AnyTool = Annotated[
    Annotated[CustomTool, Tag("custom")] | Annotated[ServerTool, Tag("server")], Discriminator(_tool_tag)
]


class ToolChoice(BaseModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class ThinkingParam(BaseModel):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None
    display: Literal["summarized", "omitted"] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ThinkingParam:
        if self.type == "enabled":
            if self.budget_tokens is None:
                raise ValueError("thinking.budget_tokens is required when thinking.type is 'enabled'")
            if self.budget_tokens < 1024:
                raise ValueError(f"thinking.budget_tokens must be >= 1024 (got {self.budget_tokens})")
        elif self.type == "disabled":
            if self.budget_tokens is not None:
                raise ValueError("thinking.budget_tokens is not allowed when thinking.type is 'disabled'")
            if self.display is not None:
                raise ValueError("thinking.display is not allowed when thinking.type is 'disabled'")
        elif self.budget_tokens is not None:
            raise ValueError("thinking.budget_tokens is not allowed when thinking.type is 'adaptive'")
        return self


class TaskBudget(BaseModel):
    type: Literal["tokens"]
    total: int = Field(gt=0)
    remaining: NonNegativeInt | None = None


class JSONOutputFormat(BaseModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    effort: Literal["minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    task_budget: TaskBudget | None = None
    format: JSONOutputFormat | None = None


class CountTokensRequest(BaseModel):
    """``POST /v1/messages/count_tokens``."""

    model: str
    messages: list[Message]
    system: str | list[ContentBlock] | None = None
    thinking: ThinkingParam | None = None
    tool_choice: ToolChoice | None = None
    tools: list[AnyTool] | None = None
    output_config: OutputConfig | None = None
    betas: list[str] | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``."""

    max_tokens: int
    metadata: dict[str, Any] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None

    @field_validator("model")
    @classmethod
    def _model_given(cls, value: str) -> str:
        if not value:
            raise ValueError("Model is required")
        return value

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("max_tokens must be positive")
        return value


def validation_digest(errors: list[dict[str, Any]]) -> str:
    """``loc: msg; …`` (SGLang's ``_anthropic_validation_message``: no internals, ≤ 500 chars)."""
    parts = []
    for error in errors:
        loc = ".".join(str(p) for p in error.get("loc") or () if p != "body")
        msg = str(error.get("msg") or "").strip()
        if loc and msg:
            parts.append(f"{loc}: {msg}")
        elif msg:
            parts.append(msg)
    text = "; ".join(parts) or "Invalid request"
    return text[:500] + "…" if len(text) > 500 else text


def _image_part(source: Any) -> dict[str, Any] | None:
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64":
        data = source.get("data", "")
        media = source.get("media_type", "image/png")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}} if data else None
    url = source.get("url")
    return {"type": "image_url", "image_url": {"url": url}} if url else None


def _tool_result_contents(content: Any) -> list[Any]:
    """A ``tool_result``'s content as tool-message contents (text parts as strings)."""
    if not isinstance(content, list):
        return [str(content) if content else ""]
    parts: list[dict[str, Any]] = []
    for block in content:
        item = block.model_dump(exclude_none=True) if isinstance(block, BaseModel) else block
        if not isinstance(item, dict):
            continue
        if item.get("type") == "text" and item.get("text"):
            parts.append({"type": "text", "text": item["text"]})
        elif item.get("type") == "image" and (image := _image_part(item.get("source"))) is not None:
            parts.append(image)
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [parts[0]["text"]]
    return [parts] if parts else [""]


def _user_flush(out: list[dict[str, Any]], parts: list[dict[str, Any]]) -> None:
    if parts:
        single = len(parts) == 1 and parts[0]["type"] == "text"
        out.append({"role": "user", "content": parts[0]["text"] if single else list(parts)})
        parts.clear()


def _system_text(content: str | list[Any]) -> str | None:
    if isinstance(content, str):
        return content.strip() or None
    texts = [b.text.strip() for b in content if isinstance(b, TextBlock) and b.text.strip()]
    return "\n".join(texts) or None


def _messages(req: CountTokensRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system: list[str] = []
    if isinstance(req.system, str) and req.system.strip():
        system.append(req.system)
    elif isinstance(req.system, list):
        system += [b.text for b in req.system if isinstance(b, TextBlock) and b.text]
    system += [t for m in req.messages if m.role == "system" and (t := _system_text(m.content))]
    if system:
        out.append({"role": "system", "content": "\n".join(system)})
    for msg in req.messages:
        if msg.role == "system":
            continue
        if isinstance(msg.content, str):
            out.append({"role": msg.role, "content": msg.content})
            continue
        turn: dict[str, Any] = {"role": msg.role}
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        if msg.role == "assistant":
            if any(isinstance(b, RedactedThinkingBlock) for b in msg.content):
                raise ValueError("Anthropic redacted_thinking history is not supported")
            thoughts = [b.thinking for b in msg.content if isinstance(b, ThinkingBlock) and b.thinking]
            if thoughts:
                turn["reasoning_content"] = "\n".join(thoughts)
        for block in msg.content:
            if isinstance(block, TextBlock):
                parts.append({"type": "text", "text": block.text})
            elif isinstance(block, ImageBlock) and (image := _image_part(block.source)) is not None:
                parts.append(image)
            elif isinstance(block, ToolUseBlock):
                function = {"name": block.name, "arguments": json.dumps(block.input)}
                calls.append(
                    {"id": block.id or f"call_{uuid.uuid4().hex}", "type": "function", "function": function}
                )
            elif isinstance(block, ToolResultBlock):
                contents = _tool_result_contents(block.content)
                if msg.role == "user":
                    _user_flush(out, parts)
                    call_id = block.tool_use_id or block.id or ""
                    out += [{"role": "tool", "tool_call_id": call_id, "content": c} for c in contents]
                else:
                    text = "\n".join(c for c in contents if isinstance(c, str))
                    parts.append({"type": "text", "text": f"Tool result: {text}"})
        if calls:
            turn["tool_calls"] = calls
        if parts:
            single = len(parts) == 1 and parts[0]["type"] == "text"
            turn["content"] = parts[0]["text"] if single else parts
            out.append(turn)
        elif calls:
            out.append(turn)
        elif msg.role == "assistant":
            out.append({**turn, "content": ""})
    return out


def chat_body(
    req: CountTokensRequest, *, max_tokens: int = 1, stream: bool = False, reasoning_parser: str | None = None
) -> dict[str, Any]:
    """The chat-completions body SGLang builds for *req* (raises ValueError).

    ``thinking`` is serving_chat's ``apply_reasoning_enabled``: refused when enabled
    without a reasoning parser, else the template's thinking switch.
    """
    body: dict[str, Any] = {"messages": _messages(req), "model": req.model, "max_tokens": max_tokens,
                            "stream": stream}  # fmt: skip
    if isinstance(req, MessagesRequest):
        for key, value in (("temperature", req.temperature), ("top_p", req.top_p), ("top_k", req.top_k),
                           ("stop", req.stop_sequences)):  # fmt: skip
            if value is not None:
                body[key] = value
    if stream:
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    if req.thinking is not None:
        enabled = req.thinking.type != "disabled"
        if not reasoning_parser and enabled:
            raise ValueError("Anthropic thinking is not supported for models without a reasoning parser")
        if reasoning_parser:
            body["chat_template_kwargs"] = {"enable_thinking": enabled, "thinking": enabled}
    config = req.output_config
    if config is not None and config.format is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "response", "schema": config.format.schema_, "strict": True}}  # fmt: skip
    if config is not None and config.effort is not None:
        body["reasoning_effort"] = "max" if config.effort == "xhigh" else config.effort
    tools: list[dict[str, Any]] = [
        {"type": "function", "function": {"name": t.name, "description": t.description or "",
                                          "parameters": t.input_schema, "strict": t.strict}}
        for t in req.tools or [] if isinstance(t, CustomTool)
    ]  # fmt: skip
    if tools:
        body["tools"] = tools
    choice = req.tool_choice
    if choice is not None:
        body["parallel_tool_calls"] = not choice.disable_parallel_tool_use
        if choice.type == "none":
            body["tool_choice"] = "none"
        elif tools:
            if choice.type == "tool" and not any(t["function"]["name"] == choice.name for t in tools):
                raise ValueError(
                    f"tool_choice references tool {choice.name!r} but it is not in the forwarded tools "
                    "list (server-side Anthropic tools cannot be selected)"
                )
            body["tool_choice"] = {"auto": "auto", "any": "required"}.get(choice.type) or {
                "type": "function", "function": {"name": choice.name}}  # fmt: skip
        elif choice.type in ("any", "tool"):
            raise ValueError(
                f"tool_choice={choice.type!r} requires at least one custom tool; all supplied tools were "
                "server-side Anthropic built-ins which the OpenAI-compatible backend cannot invoke"
            )
    elif tools:
        body["tool_choice"] = "auto"
    return body
