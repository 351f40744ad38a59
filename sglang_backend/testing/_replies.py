"""Reply helpers shared by the stand-in's route modules: JSON bodies, SGLang's error shapes, SSE."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from sglang_backend.testing._protocol import validation_message

BodyT = TypeVar("BodyT", bound=BaseModel)

__all__ = [
    "DONE",
    "BadRequest",
    "JSONResponse",
    "dumps",
    "json_body",
    "native_error",
    "openai_error",
    "sse",
]

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        """Serialize *obj* to JSON bytes (orjson)."""
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - orjson is optional

    def dumps(obj: Any) -> bytes:
        """Serialize *obj* to JSON bytes (stdlib)."""
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class JSONResponse(Response):
    """A JSON response rendered with orjson when available."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Render *content* as JSON bytes."""
        return dumps(content)


class BadRequest(Exception):
    """A request rejected before generation (rendered by the route's error style)."""

    def __init__(self, message: str, err_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.message = message
        self.err_type = err_type


def openai_error(message: str, err_type: str = "BadRequestError", code: int = 400) -> JSONResponse:
    """SGLang's top-level OpenAI error body."""
    body = {"object": "error", "message": message, "type": err_type, "param": None, "code": code}
    return JSONResponse(body, status_code=code)


async def json_body(request: Request) -> Any:
    """Return the parsed JSON body; Content-Type must be ``application/json``."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise BadRequest(
            "1 validation error:\n  {'type': 'value_error', 'loc': ('header', 'content-type'), "
            "'msg': \"Unsupported Media Type: Only 'application/json' is allowed\"}",
            "Bad Request",
        )
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadRequest(
            "1 validation error:\n  {'type': 'json_invalid', "
            f"'loc': ('body', {getattr(exc, 'pos', 0)}), 'msg': 'JSON decode error'}}",
            "Bad Request",
        ) from exc


async def validated_body(request: Request, model: type[BodyT]) -> BodyT:
    """The JSON body validated as ``model``; BadRequest ("Bad Request", pydantic's wording, as
    SGLang's request validation answers) when it is not JSON or not valid."""
    try:
        return model.model_validate(await json_body(request))
    except ValidationError as exc:
        raise BadRequest(validation_message(exc), "Bad Request") from exc


def sse(obj: Any) -> bytes:
    """One SSE event."""
    return b"data: " + dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def native_error(message: str, status_code: int = 400) -> JSONResponse:
    """The native routes' error body (``/generate``, ``/encode``…): ``{"error": {"message"}}``."""
    return JSONResponse({"error": {"message": message}}, status_code=status_code)
