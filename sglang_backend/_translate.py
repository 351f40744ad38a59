"""The one place where failures of a request become the library's error types.

Every request path (chat, streams, token counting, native endpoints, the integrations'
transport) reaches the server through :class:`~sglang_backend._lease.RequestPath`, which hands
every exception raised while a request is admitted to :func:`classify`. The same failure thus
gets the same type everywhere:

=========================================  ====================================================
failure                                    error
=========================================  ====================================================
any timeout (connect, read, pool, SDK)     :class:`RequestTimeoutError`
status 400/422                             :class:`BadRequestError`
status 401/403                             :class:`AuthenticationError`
other error status, error event in stream  :class:`RequestError`
transport failure, server gone             :class:`ServerCrashedError` (decided by the backend)
transport failure, server alive/unknown    :class:`ServerUnavailableError`
=========================================  ====================================================

Error bodies come in SGLang's shapes (``{"object": "error", "message": ...}`` on ``/v1``,
``{"error": "Unauthorized"}``, ``{"error": {"message": ...}}`` on native routes and from smg);
the message shown is the server's own text, never just "Error code: 401".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import openai

from . import _http
from .errors import (
    AuthenticationError,
    BadRequestError,
    RequestError,
    RequestTimeoutError,
    SGLangError,
)

__all__ = ["Failure", "check_response", "classify", "server_message", "status_error"]

httpx = _http.httpx


def server_message(body: object) -> str | None:
    """The human text of an error body in any of the shapes SGLang and its routers send."""
    if isinstance(body, Mapping):
        message = body.get("message")
        if isinstance(message, str):
            return message
        error = body.get("error")
        if isinstance(error, str):
            return error
        if isinstance(error, Mapping):
            inner = error.get("message")
            if isinstance(inner, str):
                return inner
        detail = body.get("detail")  # FastAPI's own 404/405/422 bodies
        if isinstance(detail, str):
            return detail
        if detail is not None:
            return json.dumps(detail)[:500]
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return None


def status_error(status: int, body: object, *, fallback: str = "") -> RequestError:
    """The typed error for an error status with the server's own message."""
    message = server_message(body) or fallback or "no error message"
    text = f"the server answered {status}: {message}"
    if status in (400, 422):
        return BadRequestError(text, status_code=status, body=body)
    if status in (401, 403):
        return AuthenticationError(text, status_code=status, body=body)
    return RequestError(text, status_code=status, body=body)


def _decoded(response: Any) -> object:
    try:
        return response.json()
    except ValueError:
        return response.text


def check_response(response: Any) -> Any:
    """Return an httpx response with a 2xx status; raise the typed error otherwise.

    The body must already be read (non-streamed responses are).
    """
    if response.status_code < 400:
        return response
    raise status_error(response.status_code, _decoded(response))


@dataclass(frozen=True)
class Failure:
    """What :func:`classify` made of an exception.

    ``error`` is the typed error to raise, or None when the request failed at the transport
    level and the backend must decide (crashed or unavailable). ``sent`` says whether the
    request may have reached the server (not safe to retry when True).
    """

    error: SGLangError | None
    transport: bool = False
    sent: bool = True
    retry_after_recovery: bool = False
    #: The server closed the connection before answering at all: a kept-alive connection
    #: that the server timed out just as it was reused, unless the server died. Safe to send
    #: again once the supervisor has seen the server alive.
    retry_if_alive: bool = False


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException))


def _no_response(exc: BaseException) -> bool:
    for error in (exc, exc.__cause__, exc.__context__):
        if isinstance(error, httpx.RemoteProtocolError) and "without sending a response" in str(error):
            return True
    return False


def _never_sent(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, httpx.ConnectError) or isinstance(cause, httpx.ConnectError)


def classify(exc: BaseException, *, timeout: float) -> Failure:
    """Map an exception raised while a request was admitted (see the module table)."""
    if isinstance(exc, SGLangError):
        return Failure(exc)
    if _is_timeout(exc) or _is_timeout(exc.__cause__ or exc):
        return Failure(RequestTimeoutError(
            f"no answer within {timeout:g} s (timeout); not retried, the server may still "
            "be generating"
        ))
    if isinstance(exc, openai.APIStatusError):
        # A 503 is what a server answers while it drains for a stop: retry once recovered.
        return Failure(
            status_error(exc.status_code, exc.body, fallback=exc.message),
            sent=exc.status_code != 503,
            retry_after_recovery=exc.status_code == 503,
        )
    if isinstance(exc, httpx.HTTPStatusError):
        return Failure(status_error(exc.response.status_code, _decoded(exc.response)))
    if isinstance(exc, (openai.APIConnectionError, httpx.TransportError)):
        return Failure(None, transport=True, sent=not _never_sent(exc),
                       retry_if_alive=_no_response(exc))
    if isinstance(exc, openai.APIError):  # an error event inside a 200 stream
        body = exc.body
        return Failure(RequestError(
            f"the server reported an error mid-stream: {server_message(body) or exc.message}",
            body=body,
        ))
    return Failure(None)
