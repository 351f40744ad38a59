"""SGLang 0.5.23's API-key check (``utils/auth.py``) as a plain ASGI middleware.

* ``OPTIONS`` and paths starting ``/health``, ``/ready``, ``/metrics`` always pass.
* Admin-optional endpoints (``@auth_level(AuthLevel.ADMIN_OPTIONAL)``): with
  ``--admin-api-key`` only that key passes (the normal key is refused, 401); without it,
  ``--api-key`` if set; else open.
* Every other endpoint: ``--api-key`` if set, else open (``--admin-api-key`` alone does
  not protect them).
* Refusal: 401 ``{"error": "Unauthorized"}``. 0.5.23 marks no endpoint ADMIN_FORCE (its
  403 path is unused by the endpoints the stand-in serves).
* ``Authorization: Bearer <key>``: scheme case-insensitive, key compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping

__all__ = ["ADMIN_OPTIONAL_PATHS", "AuthMiddleware"]

Scope = MutableMapping[str, object]
Message = MutableMapping[str, object]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The 0.5.23 admin-optional endpoints the stand-in serves.
ADMIN_OPTIONAL_PATHS = frozenset(
    {
        "/flush_cache", "/abort_request", "/update_weights_from_disk", "/update_weight_version",
        "/get_weights_by_name", "/release_memory_occupation", "/resume_memory_occupation",
        "/load_lora_adapter", "/unload_lora_adapter", "/pause_generation", "/continue_generation",
        "/set_internal_state", "/start_profile", "/stop_profile", "/freeze_gc", "/configure_logging",
    }
)  # fmt: skip

_UNAUTHORIZED = b'{"error":"Unauthorized"}'


class AuthMiddleware:
    """Checks ``Authorization`` per SGLang's auth levels before the app sees the request."""

    def __init__(self, app: ASGIApp, api_key: str | None, admin_api_key: str | None = None) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None
        self._admin = admin_api_key.encode() if admin_api_key else None

    def _expected(self, path: str) -> bytes | None:
        if path in ADMIN_OPTIONAL_PATHS and self._admin is not None:
            return self._admin
        return self._key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if (
            scope["type"] != "http"
            or scope.get("method") == "OPTIONS"
            or path.startswith(("/health", "/metrics", "/ready"))
        ):
            await self.app(scope, receive, send)
            return
        expected = self._expected(path)
        if expected is None:
            await self.app(scope, receive, send)
            return
        header = b""
        headers = scope.get("headers", ())
        for name, value in headers if isinstance(headers, list | tuple) else ():
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token, expected):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_UNAUTHORIZED)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})
