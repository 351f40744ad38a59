"""The stand-in's HTTP application (FastAPI): SGLang's native and OpenAI routes."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response

from sglang_backend.testing import (
    _admin,
    _chat_route,
    _completions_route,
    _embeddings,
    _generate,
    _info_routes,
    _lora,
    _messages_api,
    _responses_api,
    _scoring,
)
from sglang_backend.testing._auth import AuthMiddleware
from sglang_backend.testing._info_routes import env_health_generation
from sglang_backend.testing._replies import dumps
from sglang_backend.testing._route_context import Reply, RouteContext
from sglang_backend.testing._state import WARMUP_HEADER, ServerState

__all__ = ["WARMUP_HEADER", "ServerState", "build_app", "dumps", "env_health_generation"]


def build_app(state: ServerState) -> FastAPI:
    """Create the FastAPI application serving *state*: the route modules, by concern."""
    args = state.args
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    async def reply(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Reply)
        return exc.response

    app.add_exception_handler(Reply, reply)
    app.state.standin = state
    ctx = RouteContext(state)
    _info_routes.register(app, ctx)
    _chat_route.register(app, ctx)
    _completions_route.register(app, ctx)
    _generate.register(app, state)
    _responses_api.register(app, state)
    _messages_api.register(app, state)
    _embeddings.register(app, state)
    _scoring.register(app, state)
    _admin.register(app, state)
    _lora.register(app, state.loras)

    app.add_middleware(AuthMiddleware, api_key=args.api_key, admin_api_key=args.admin_api_key)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    return app


