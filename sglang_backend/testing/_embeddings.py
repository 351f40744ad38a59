"""``/v1/embeddings`` and the native ``/encode`` / ``/classify`` as SGLang 0.5.23 serves them.

Inputs: str, [str], [ints], [[ints]]; ``encoding_format`` ``float`` or ``base64``
(little-endian float32, as SGLang packs it). Vectors are deterministic and unit-norm:
hashed features of the stand-in tokenizer's tokens and token pairs, so equal texts get
equal vectors and texts sharing words point the same way. On a generation model (no
``--is-embedding``) SGLang's TokenizerManager refuses: 400 "This model does not appear
to be an embedding model by default. …".
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import struct
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._checks import check_context
from sglang_backend.testing._lora import parse_model
from sglang_backend.testing._replies import (
    BadRequest,
    JSONResponse,
    native_error,
    openai_error,
    validated_body,
)
from sglang_backend.testing._requests_registry import new_rid
from sglang_backend.testing._state import ServerState

__all__ = ["EMBEDDING_DIM", "embed", "register"]

#: Hidden size of the imitated model (Qwen2.5-0.5B).
EMBEDDING_DIM = 896

NOT_EMBEDDING = (
    "This model does not appear to be an embedding model by default. "
    "Please add `--is-embedding` when launching the server or try another model."
)


class EmbeddingRequest(BaseModel):
    """SGLang's ``EmbeddingRequest`` (unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore")

    input: list[list[int]] | list[int] | str | list[str]
    model: str = "default"
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None
    rid: list[str] | str | None = None
    priority: int | None = None
    lora_path: list[str | None] | str | None = None


def _bucket(feature: str) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % EMBEDDING_DIM, 1.0 if value >> 63 else -1.0


def embed(ids: Sequence[int]) -> list[float]:
    """A deterministic unit-norm vector for the token ids *ids*."""
    vector = [0.0] * EMBEDDING_DIM
    features = [f"t{i}" for i in ids] + [f"p{a},{b}" for a, b in itertools.pairwise(ids)]
    for feature in features or ["empty"]:
        index, sign = _bucket(feature)
        vector[index] += sign
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _validate(req: EmbeddingRequest) -> str | None:
    """``OpenAIServingEmbedding._validate_request`` (0.5.23 wording)."""
    if req.encoding_format not in ("float", "base64"):
        return f"encoding_format must be either 'float' or 'base64', got {req.encoding_format!r}"
    data = req.input
    if not data:
        return "Input cannot be empty"
    if isinstance(data, str):
        return "Input cannot be empty or whitespace only" if not data.strip() else None
    first = data[0]
    if isinstance(first, str):
        for i, item in enumerate(data):
            if not isinstance(item, str):
                return "All items in input list must be strings"
            if not item.strip():
                return f"Input at index {i} cannot be empty or whitespace only"
    elif isinstance(first, int):
        for i, item in enumerate(data):
            if not isinstance(item, int):
                return "All items in input list must be integers"
            if item < 0:
                return f"Token ID at index {i} must be non-negative"
    return None


def _token_lists(data: Any) -> list[list[int]]:
    if isinstance(data, str):
        return [tok.encode(data)]
    items: list[Any] = list(data)
    if items and isinstance(items[0], str):
        return [tok.encode(t) for t in items]
    if items and isinstance(items[0], int):
        return [list(items)]
    return [list(ids) for ids in items]


def _serialize(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def register(app: FastAPI, state: ServerState) -> None:
    """Add ``/v1/embeddings``, ``/encode`` and ``/classify`` to *app*."""
    args = state.args

    def check_length(ids: list[int]) -> None:
        check_context(len(ids), None, args.context_length)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        try:
            req = await validated_body(request, EmbeddingRequest)
        except BadRequest as exc:
            return openai_error(exc.message, exc.err_type)
        problem = _validate(req)
        if problem is not None:
            return openai_error(problem)
        lists = _token_lists(req.input)
        try:
            if not state.is_embedding:
                raise BadRequest(NOT_EMBEDDING)
            if req.dimensions is not None:  # the imitated model is not a Matryoshka model
                raise BadRequest(
                    f"Model '{state.model_path}' does not support matryoshka representation, "
                    "changing output dimensions will lead to poor results."
                )
            _, adapter = parse_model(req.model)
            lora = adapter or req.lora_path
            for name in lora if isinstance(lora, list) else [lora]:
                if name is not None:
                    state.loras.require(name)
            for ids in lists:
                check_length(ids)
        except BadRequest as exc:
            return openai_error(exc.message)
        rid = req.rid if isinstance(req.rid, str) else new_rid()
        state.enter(rid, "embedding", request)
        try:
            await state.unpaused.wait()
            data = [
                {"embedding": _serialize(embed(ids), req.encoding_format), "index": i, "object": "embedding"}
                for i, ids in enumerate(lists)
            ]
        finally:
            state.leave(rid)
        prompt_tokens = sum(len(ids) for ids in lists)
        state.prompt_tokens_total += prompt_tokens
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
            "reasoning_tokens": 0,
            "completion_tokens_details": None,
        }
        return JSONResponse({"data": data, "model": state.model_path, "object": "list", "usage": usage})

    async def encode(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return native_error("Invalid JSON body")
        if not isinstance(body, dict):
            body = {}
        text, input_ids = body.get("text"), body.get("input_ids")
        if text is None and input_ids is None:
            return native_error("At least one of text, input_ids, image, video, or audio should be provided")
        if not state.is_embedding:
            return native_error(NOT_EMBEDDING)
        batched = isinstance(text, list) or (
            input_ids is not None and bool(input_ids) and isinstance(input_ids[0], list)
        )
        lists = _token_lists(input_ids if input_ids is not None else text)
        try:
            for ids in lists:
                check_length(ids)
        except BadRequest as exc:
            return native_error(exc.message)
        given = body.get("rid")
        rids = given if isinstance(given, list) else [given if isinstance(given, str) else new_rid()]
        rids = [r if isinstance(r, str) else new_rid() for r in rids]
        rids += [new_rid() for _ in range(len(lists) - len(rids))]
        outputs = []
        for rid, ids in zip(rids, lists, strict=False):
            state.enter(rid, "embedding", request)
            try:
                await state.unpaused.wait()
                meta = {
                    "id": rid,
                    "finish_reason": {"type": "length", "length": 0},
                    "prompt_tokens": len(ids),
                    "weight_version": state.weight_version,
                    "num_retractions": 0,
                }
                outputs.append({"embedding": embed(ids), "meta_info": meta})
            finally:
                state.leave(rid)
        state.prompt_tokens_total += sum(len(ids) for ids in lists)
        return JSONResponse(outputs if batched else outputs[0])

    for path in ("/encode", "/classify"):
        app.add_api_route(path, encode, methods=["POST", "PUT"])
