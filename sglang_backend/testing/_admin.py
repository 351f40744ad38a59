"""SGLang's admin endpoints (all ``ADMIN_OPTIONAL`` in 0.5.23, see ``_auth.py``).

``/abort_request``, ``/flush_cache``, ``/update_weights_from_disk``,
``/release_memory_occupation``, ``/resume_memory_occupation``, ``/pause_generation``,
``/continue_generation``; bodies and answers as SGLang's ``http_server.py`` and
``io_struct.py`` define them. Each writes its events-file line.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from sglang_backend.testing._replies import JSONResponse
from sglang_backend.testing._state import ServerState

__all__ = ["ALL_MEMORY_TAGS", "register"]

#: ``GPU_MEMORY_ALL_TYPES``: what no (or an empty) ``tags`` means.
ALL_MEMORY_TAGS = ("kv_cache", "weights", "cuda_graph")

_FLUSHED = (
    "Cache flushed.\nPlease check backend logs for more details. "
    "(When there are running or waiting requests, the operation will not be performed.)\n"
)


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _invalid(loc: str, msg: str, kind: str, value: Any) -> JSONResponse:
    """FastAPI's 422 for a body field of the wrong type or missing."""
    detail = [{"type": kind, "loc": ["body", loc], "msg": msg, "input": value}]
    return JSONResponse({"detail": detail}, status_code=422)


def register(app: FastAPI, state: ServerState) -> None:
    """Add the admin endpoints to *app*."""
    events = state.events

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await _body(request)
        rid = body.get("rid", "")
        if rid is not None and not isinstance(rid, str):
            # AbortReq.rid is Optional[str]: a list is refused before the handler runs.
            return _invalid("rid", "Input should be a valid string", "string_type", rid)
        state.registry.abort(rid or None, abort_all=bool(body.get("abort_all")))
        return Response(status_code=200)

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> PlainTextResponse:
        if state.inflight > 0:
            events.write("flush_cache", success=False)
            return PlainTextResponse(
                "Cache not flushed: there are running or waiting requests.\n", status_code=400
            )
        events.write("flush_cache", success=True)
        return PlainTextResponse(_FLUSHED)

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: Request) -> Response:
        body = await _body(request)
        model_path = body.get("model_path")
        if not isinstance(model_path, str):
            return _invalid("model_path", "Field required", "missing", body)
        if body.get("abort_all_requests"):
            state.registry.abort(abort_all=True, reason="update_weights")
        message = "Succeeded to update model weights."
        version = body.get("weight_version")
        if version is not None:
            state.weight_version = str(version)
            message += f" Weight version updated to {version}."
        state.model_path = model_path
        events.write(
            "update_weights",
            model_path=model_path,
            load_format=body.get("load_format"),
            weight_version=state.weight_version,
        )
        return JSONResponse({"success": True, "message": message, "num_paused_requests": 0})

    async def tags_of(request: Request) -> list[str] | None:
        tags = (await _body(request)).get("tags")
        return [str(t) for t in tags] if isinstance(tags, list) else None

    # SGLang's scheduler asserts it is idle on release and removes each resumed tag from its
    # offloaded set: either failure is an exception in the scheduler, which takes the whole
    # server down. Without --enable-memory-saver (the stand-in has none) the release frees
    # nothing, so generation goes on normally while "released".

    @app.api_route("/release_memory_occupation", methods=["GET", "POST"])
    async def release_memory_occupation(request: Request) -> Response:
        tags = await tags_of(request)
        if state.inflight > 0:
            await state.crash_now(
                "AssertionError: release_memory_occupation should be called only when server is idle."
            )
        state.released.update(tags or ALL_MEMORY_TAGS)
        events.write("release_memory", tags=tags)
        return JSONResponse(None)

    @app.api_route("/resume_memory_occupation", methods=["GET", "POST"])
    async def resume_memory_occupation(request: Request) -> Response:
        tags = await tags_of(request)
        for tag in tags or ALL_MEMORY_TAGS:
            if tag not in state.released:
                await state.crash_now(f"KeyError: {tag!r}")
            state.released.discard(tag)
        events.write("resume_memory", tags=tags)
        return JSONResponse(None)

    @app.post("/pause_generation")
    async def pause_generation(request: Request) -> Response:
        mode = (await _body(request)).get("mode", "abort")
        if mode not in {"abort", "retract", "in_place"}:
            return _invalid("mode", "Input should be 'abort', 'retract' or 'in_place'", "literal_error", mode)
        state.unpaused.clear()
        if mode == "abort":
            state.registry.abort(abort_all=True, reason="pause_generation")
        events.write("pause_generation", mode=mode)
        return JSONResponse({"message": "Generation paused successfully.", "status": "ok"})

    @app.post("/continue_generation")
    async def continue_generation() -> Response:
        state.unpaused.set()
        events.write("continue_generation")
        return JSONResponse({"message": "Generation continued successfully.", "status": "ok"})
