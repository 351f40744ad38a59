"""The ASGI application of the pool's OpenAI-compatible front (FastAPI).

Each request is routed by its ``model`` field to a pool member, held while that member loads
(the pool's admission), and relayed to the member's server byte for byte: a stream is sent on
as its chunks arrive, never buffered. The member's own key never leaves the process; clients
authenticate to the front with the front's key.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .. import _http
from ..errors import SGLangError
from ..pool import ModelPool, PoolModel, PoolQueueFullError, PoolTimeoutError, UnknownModelError

__all__ = ["create_app"]

httpx = _http.httpx

# Paths relayed to the member, and whether the member's server takes a ``model`` field there
# (SGLang's /generate does not: the front's routing field is removed).
ROUTES: dict[str, bool] = {
    "/v1/chat/completions": True,
    "/v1/completions": True,
    "/v1/embeddings": True,
    "/generate": False,
}
_RELAYED_HEADERS = ("content-type", "cache-control")


def _error(status: int, message: str, kind: str, code: str, **extra: Any) -> JSONResponse:
    """An error in OpenAI's shape (the SDKs read ``error.message``)."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, **extra}},
                        status_code=status)


class _Clients:
    """One pool-admitted HTTP client per member, made on first use, closed at shutdown."""

    def __init__(self, pool: ModelPool) -> None:
        self._pool = pool
        self._clients: dict[str, Any] = {}

    def get(self, handle: PoolModel) -> Any:
        client = self._clients.get(handle.name)
        if client is None:
            client = self._clients[handle.name] = handle.http_client(
                timeout=httpx.Timeout(handle.model.timeout, connect=10.0))
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


async def _relay(response: Any) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):  # a client that went away still frees the lease
            await response.aclose()


def create_app(pool: ModelPool, *, api_key: str | None) -> FastAPI:
    """The front's FastAPI app over ``pool``; ``api_key`` (None: no key checked) is required
    as ``Authorization: Bearer`` on every route but ``/health``."""
    app = FastAPI(title="sglang-backend pool front", docs_url=None, redoc_url=None,
                  openapi_url=None)
    clients = _Clients(pool)
    app.state.clients = clients
    expected = f"Bearer {api_key}".encode() if api_key else None

    def refused(request: Request) -> JSONResponse | None:
        if expected is None:
            return None
        given = request.headers.get("authorization", "").encode()
        if secrets.compare_digest(given, expected):
            return None
        return _error(401, "invalid or missing API key (Authorization: Bearer KEY)",
                      "authentication_error", "invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        data = [{"id": m["name"], "object": "model", "owned_by": "sglang-backend", **m}
                for m in pool.describe()]
        for card in data:
            del card["name"]
        return JSONResponse({"object": "list", "data": data})

    async def relay(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        path = request.url.path
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return _error(400, "the body must be a JSON object", "invalid_request_error",
                          "invalid_json")
        name = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(name, str):
            return _error(400, f"the request needs a \"model\" field naming one of: "
                          f"{', '.join(pool.names)}", "invalid_request_error", "model_missing",
                          known=pool.names)
        try:
            handle = pool.model(name)
        except UnknownModelError as exc:
            return _error(404, str(exc), "invalid_request_error", "model_not_found",
                          known=exc.known)
        if ROUTES[path]:
            payload["model"] = handle.request_model
        else:
            payload.pop("model")
        client = clients.get(handle)
        outgoing = client.build_request("POST", path, content=json.dumps(payload).encode(),
                                        headers={"content-type": "application/json"})
        try:
            upstream = await client.send(outgoing, stream=True)
        except PoolQueueFullError as exc:
            return _error(429, str(exc), "rate_limit_error", "pool_queue_full")
        except PoolTimeoutError as exc:
            return _error(503, str(exc), "server_error", "pool_timeout")
        except SGLangError as exc:  # the member could not be started
            return _error(503, f"{handle.name}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                          "server_error", "model_unavailable")
        except httpx.TransportError as exc:
            return _error(502, f"{handle.name}: the model's server did not answer "
                          f"({type(exc).__name__})", "server_error", "upstream_unreachable")
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in _RELAYED_HEADERS}
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            headers["x-accel-buffering"] = "no"
        return StreamingResponse(_relay(upstream), status_code=upstream.status_code,
                                 headers=headers)

    for route in ROUTES:
        app.add_api_route(route, relay, methods=["POST"])
    return app
