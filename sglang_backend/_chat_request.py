"""A chat call built and checked but not yet sent, and the parsing of its reply.

Built by :meth:`AsyncSGLangModel.chat_request` with no I/O, so the async model and the
blocking facade send the very same request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic
from openai.types.chat import ChatCompletion, ParsedChatCompletion

from .errors import StructuredOutputError

__all__ = ["ChatRequest"]


@dataclass(frozen=True)
class ChatRequest:
    """A chat call built and validated, not yet sent (:meth:`AsyncSGLangModel.chat_request`).

    Attributes:
        kwargs: the SDK's ``chat.completions.create`` arguments (``model`` included).
        rid: the request id the server knows the request by (aborts name it).
        stream: whether the reply is streamed.
        parse_into: the pydantic model a structured reply is validated into, if any.
    """

    kwargs: dict[str, Any]
    rid: str
    stream: bool
    parse_into: type[pydantic.BaseModel] | None = None

    def finish(self, completion: ChatCompletion) -> ChatCompletion:
        """The reply as :meth:`AsyncSGLangModel.run` returns it (parsed when asked)."""
        if self.parse_into is not None:
            return _parse(completion, self.parse_into)
        return completion


def _parse(completion: ChatCompletion, into: type[pydantic.BaseModel]) -> ChatCompletion:
    choices = []
    for choice in completion.choices:
        raw = choice.message.content
        if choice.finish_reason == "length":
            raise StructuredOutputError(
                "the reply was cut at max_tokens before the JSON was complete", raw=raw
            )
        try:
            parsed = into.model_validate_json(raw or "")
        except pydantic.ValidationError as exc:
            raise StructuredOutputError(
                f"the reply does not validate against {into.__name__}: "
                f"{exc.errors()[0]['msg'] if exc.errors() else exc}",
                raw=raw,
            ) from exc
        dumped = choice.model_dump()
        dumped["message"]["parsed"] = parsed
        choices.append(dumped)
    data = completion.model_dump()
    data["choices"] = choices
    result: ParsedChatCompletion[Any] = ParsedChatCompletion[into].model_validate(  # type: ignore[valid-type]
        data
    )
    return result
