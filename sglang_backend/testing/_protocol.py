"""Request models mirroring SGLang's OpenAI protocol (unknown fields ignored)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "DetokenizeRequest",
    "FunctionDef",
    "ResponseFormat",
    "StreamOptions",
    "TokenizeRequest",
    "Tool",
    "ToolChoiceNamed",
    "validation_message",
]


class _Model(BaseModel):
    """Base: unknown request fields are silently ignored, as in SGLang."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, protected_namespaces=())


class FunctionCall(_Model):
    """A function call inside an assistant message."""

    name: str | None = None
    arguments: str | dict[str, Any] | None = None


class ToolCall(_Model):
    """An assistant tool call."""

    id: str | None = None
    index: int | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


_GENERIC_ROLES = ("system", "assistant", "tool", "function", "developer", "latest_reminder", "root")


class ChatMessage(_Model):
    """One chat message (roles as accepted by SGLang: ``user`` exactly, others any case)."""

    role: Literal["system", "user", "assistant", "tool", "function", "developer", "latest_reminder", "root"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    @field_validator("role", mode="before")
    @classmethod
    def _normalize_role(cls, value: Any) -> Any:
        """SGLang lower-cases the non-user roles (``"System"`` is fine, ``"USER"`` is not)."""
        if isinstance(value, str) and value.lower() in _GENERIC_ROLES:
            return value.lower()
        return value

    @model_validator(mode="after")
    def _check_content(self) -> ChatMessage:
        """User messages need content; content parts need a known ``type``."""
        if self.role == "user" and self.content is None:
            raise ValueError("user messages need 'content'")
        if isinstance(self.content, list):
            allowed = {"text", "image_url", "video_url", "audio_url", "input_audio"}
            if self.role == "assistant":
                allowed |= {"thinking", "reasoning"}
            for part in self.content:
                if part.get("type") not in allowed:
                    raise ValueError(f"unsupported content part type {part.get('type')!r}")
                if part.get("type") == "text" and not isinstance(part.get("text"), str):
                    raise ValueError("text content part needs a 'text' string")
        return self


class FunctionDef(_Model):
    """A tool's function definition."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool = False


class Tool(_Model):
    """A tool offered to the model."""

    type: Literal["function"] = "function"
    function: FunctionDef


class ToolChoiceFunction(_Model):
    """The function named by a tool choice (SGLang lets the name be missing)."""

    name: str | None = None


class ToolChoiceNamed(_Model):
    """``{"type": "function", "function": {"name": …}}``."""

    type: Literal["function"] = "function"
    function: ToolChoiceFunction


class JsonSchemaFormat(_Model):
    """``response_format.json_schema``."""

    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = False


class StructureFormat(_Model):
    """One structure of a (legacy) structural tag: text between *begin* and *end* follows *schema*."""

    begin: str
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    end: str


class ResponseFormat(_Model):
    """``response_format``: ``text``, ``json_object``, ``json_schema`` or ``structural_tag``.

    A structural tag comes as SGLang's legacy form (``structures`` and ``triggers``,
    ``at_least_one``) or as xgrammar's (a ``format`` object).
    """

    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None
    structures: list[StructureFormat] | None = None
    triggers: list[str] | None = None
    at_least_one: bool = False
    format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _structural_tag_shape(self) -> ResponseFormat:
        if (
            self.type == "structural_tag"
            and self.format is None
            and (self.structures is None or self.triggers is None)
        ):
            raise ValueError("a structural_tag needs 'structures' and 'triggers' (or xgrammar's 'format')")
        return self

    def structural_tag(self) -> str | None:
        """The tag as SGLang hands it to the grammar backend (``model_dump(by_alias=True)``), or None."""
        if self.type != "structural_tag":
            return None
        if self.structures is None:
            return json.dumps({"type": self.type, "format": self.format})
        structures = [s.model_dump(by_alias=True) for s in self.structures]
        return json.dumps({"type": self.type, "structures": structures, "triggers": self.triggers,
                           "at_least_one": self.at_least_one})  # fmt: skip


class StreamOptions(_Model):
    """``stream_options``."""

    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _SamplingFields(_Model):
    """Sampling fields shared by chat and text completions (SGLang extras included)."""

    model: str = "default"
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    min_tokens: int = 0
    regex: str | None = None
    ebnf: str | None = None
    stop_regex: str | list[str] | None = None
    rid: str | None = None
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _check_n(cls, value: int) -> int:
        """``n`` must be positive."""
        if value < 1:
            raise ValueError("n must be at least 1")
        return value

    def stop_list(self) -> list[str]:
        """Return ``stop`` as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions`` body."""

    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceNamed | None = None
    parallel_tool_calls: bool = True
    reasoning_effort: str | None = None
    separate_reasoning: bool = True
    stream_reasoning: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    continue_final_message: bool = False

    @model_validator(mode="after")
    def _default_tool_choice(self) -> ChatCompletionRequest:
        """Default ``tool_choice`` (``auto`` with tools, else ``none``)."""
        if self.tool_choice is None:
            self.tool_choice = "auto" if self.tools else "none"
        return self

    def check(self) -> str | None:
        """SGLang's serving-level checks (a 400 ``BadRequestError``, after body validation)."""
        if not self.messages:
            return "Messages cannot be empty."
        choice = self.tool_choice
        if choice == "required" and not self.tools:
            return "Tools cannot be empty if tool choice is set to required."
        if isinstance(choice, ToolChoiceNamed):
            if not self.tools:
                return "Tools cannot be empty if tool choice is set to a specific tool."
            if all(tool.function.name != choice.function.name for tool in self.tools):
                return f"Tool '{choice.function.name}' not found in tools list."
        if self.response_format is not None and self.response_format.type == "json_schema" and (
            self.response_format.json_schema is None or self.response_format.json_schema.schema_ is None
        ):
            return "schema_ is required for json_schema response format request."
        return None

    def completion_limit(self) -> int | None:
        """``max_completion_tokens`` or ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions`` body."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = 16
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    json_schema: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: Any) -> Any:
        """Prompt cannot be empty."""
        if value is None or (isinstance(value, (str, list)) and len(value) == 0):
            raise ValueError("Prompt cannot be empty")
        return value

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, value: int) -> int:
        """``max_tokens`` must be positive."""
        if value <= 0:
            raise ValueError("max_tokens must be positive")
        return value


class TokenizeRequest(_Model):
    """``POST /tokenize`` body: exactly one of ``prompt`` and ``messages``."""

    model: str = "default"
    prompt: str | list[str] | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True

    @model_validator(mode="after")
    def _exactly_one(self) -> TokenizeRequest:
        """Exactly one of prompt/messages."""
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("Exactly one of 'prompt' or 'messages' must be provided")
        return self


class DetokenizeRequest(_Model):
    """``POST /detokenize`` body."""

    model: str = "default"
    tokens: list[int] | list[list[int]]
    skip_special_tokens: bool = True


def validation_message(exc: ValidationError) -> str:
    """Format a pydantic error like FastAPI's ``RequestValidationError`` (SGLang's 400 text)."""
    errors = exc.errors(include_url=False, include_context=False)
    count = len(errors)
    lines = [f"{count} validation error{'s' if count != 1 else ''}:"]
    for error in errors:
        loc = ("body", *error.get("loc", ()))
        lines.append(f"  {{'type': {error['type']!r}, 'loc': {loc!r}, 'msg': {error['msg']!r}}}")
    return "\n".join(lines)
