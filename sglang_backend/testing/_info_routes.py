"""Health, readiness, model and server info, metrics, and the tokenizer routes.
"""


from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._protocol import (
    DetokenizeRequest,
    TokenizeRequest,
)
from sglang_backend.testing._replies import JSONResponse
from sglang_backend.testing._route_context import RouteContext

__all__ = ["register"]

logger = logging.getLogger("sglang.srt.entrypoints.http_server")



def env_health_generation() -> bool:
    """Whether ``/health`` runs a (simulated) generation (``SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION``)."""
    value = os.environ.get("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "true").strip().lower()
    return value not in {"0", "false", "no", "off"}


def register(app: FastAPI, ctx: RouteContext) -> None:
    """Health, info, metrics and tokenizer routes."""
    state = ctx.state
    args = state.args
    parse_body = ctx.parse_body

    # ---------------------------------------------------------------- health & info

    @app.get("/health")
    @app.get("/health_generate")
    async def health() -> Response:
        if state.status != "Up":
            return Response(status_code=503)
        if state.health_generation:
            await asyncio.sleep(1.0)
            if state.status != "Up":
                return Response(status_code=503)
        return Response(status_code=200)

    @app.get("/ready")
    @app.get("/ping")
    async def ready() -> Response:
        # 503 also while generation is paused (0.5.23)
        up = state.status == "Up" and state.unpaused.is_set()
        return Response(status_code=200 if up else 503)

    @app.get("/")
    async def root() -> JSONResponse:
        return JSONResponse("SGLang is running")

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        cards = [state.model_card(), *state.loras.cards(args.served_model_name, state.created)]
        return JSONResponse({"object": "list", "data": cards})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> JSONResponse:
        if model_id != args.served_model_name:
            return JSONResponse(
                {
                    "error": {
                        "message": f"The model '{model_id}' does not exist",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "model_not_found",
                    }
                },
                status_code=404,
            )
        return JSONResponse(state.model_card())

    @app.get("/model_info")
    async def model_info() -> JSONResponse:
        return JSONResponse(state.model_info())

    @app.get("/get_model_info")
    async def get_model_info() -> JSONResponse:
        logger.warning("Endpoint '/get_model_info' is deprecated; use '/model_info' instead.")
        return JSONResponse(state.model_info())

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info() -> JSONResponse:
        return JSONResponse(state.server_info())

    if args.enable_metrics:

        @app.get("/metrics")
        async def metrics() -> PlainTextResponse:
            label = f'model_name="{args.served_model_name}"'
            lines = [
                "# HELP sglang:prompt_tokens_total Number of prefill tokens processed.",
                "# TYPE sglang:prompt_tokens_total counter",
                f"sglang:prompt_tokens_total{{{label}}} {float(state.prompt_tokens_total)}",
                "# HELP sglang:generation_tokens_total Number of generation tokens processed.",
                "# TYPE sglang:generation_tokens_total counter",
                f"sglang:generation_tokens_total{{{label}}} {float(state.generation_tokens_total)}",
                "# HELP sglang:num_requests_total Number of requests processed.",
                "# TYPE sglang:num_requests_total counter",
                f"sglang:num_requests_total{{{label}}} {float(state.requests_total)}",
                "# HELP sglang:num_running_reqs The number of running requests.",
                "# TYPE sglang:num_running_reqs gauge",
                f"sglang:num_running_reqs{{{label}}} {float(state.inflight)}",
            ]
            return PlainTextResponse(
                "\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8"
            )

    # ---------------------------------------------------------------- tokenizer

    async def tokenize(request: Request) -> Response:
        req = await parse_body(request, TokenizeRequest)
        window = args.context_length
        if req.messages is not None:
            prompt = tok.render_chat([m.model_dump(exclude_none=True) for m in req.messages])
            ids = tok.encode(prompt)
            return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": window})
        if isinstance(req.prompt, list):
            lists = [tok.encode(p) for p in req.prompt]
            return JSONResponse({"tokens": lists, "count": [len(x) for x in lists], "max_model_len": window})
        ids = tok.encode(req.prompt or "")
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": window})

    async def detokenize(request: Request) -> Response:
        req = await parse_body(request, DetokenizeRequest)
        skip = req.skip_special_tokens
        tokens: list[Any] = list(req.tokens)
        if tokens and isinstance(tokens[0], list):
            texts = [tok.decode(ids, skip_special_tokens=skip) for ids in tokens]
            return JSONResponse({"text": texts})
        return JSONResponse({"text": tok.decode(tokens, skip_special_tokens=skip)})

    for path in ("/tokenize", "/v1/tokenize"):
        app.add_api_route(path, tokenize, methods=["POST"])
    for path in ("/detokenize", "/v1/detokenize"):
        app.add_api_route(path, detokenize, methods=["POST"])
