"""``/v1/score`` and ``/v1/rerank`` as SGLang 0.5.23 serves them.

**Score** (serving_score.py → ``TokenizerManager.score_request``): on a generation
model each ``query + item`` (``item + query`` with ``item_first``) is one prompt and the
answer is the probability of each of ``label_token_ids`` as the *next* token (or a
softmax over the labels' logprobs with ``apply_softmax``, divided by ``temperature``).
The stand-in's next-token distribution is exact and deterministic: half of the mass
copies the prompt's own tokens (tokens seen in the prompt are likelier), the other half
is spread over the whole vocabulary in four levels chosen by a permutation keyed on the
last two tokens, so it sums to one over the vocabulary. With
``score_extraction_token`` (setwise) the readout is taken at every occurrence of that
token instead of the last one, as SGLang does once ``--disable-radix-cache`` and
``--chunked-prefill-size -1`` are set. On ``--is-embedding`` the rows are the pooled
vectors (SequenceClassification path; ``label_token_ids`` is not needed).

**Rerank** (serving_rerank.py, cross-encoder path: the imitated chat template is not a
Qwen3 reranker's): ``[query, document]`` pairs go through the embedding path, so a
generation model refuses with the embedding-model 400. On ``--is-embedding`` a pair's
score is the cosine of the stand-in's embeddings of query and document, so documents
sharing the query's words rank first; results are sorted by score (``top_n`` keeps the
best), each with ``index``, ``document`` (when ``return_documents``) and ``meta_info``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._checks import check_context
from sglang_backend.testing._embeddings import NOT_EMBEDDING, embed
from sglang_backend.testing._replies import BadRequest, JSONResponse, openai_error, validated_body
from sglang_backend.testing._requests_registry import new_rid
from sglang_backend.testing._state import ServerState

__all__ = ["next_token_logprob", "register"]

_VOCAB = tok.VOCAB_SIZE  # a prime, so t -> (t * _STRIDE + key) % _VOCAB is a permutation
_STRIDE = 40_503
_LEVELS = 4
_COPY = 0.5  # share of the mass that copies the prompt's tokens
# how many of 0.._VOCAB-1 fall on each level (value % _LEVELS): the same for every key
_LEVEL_COUNTS = [len(range(level, _VOCAB, _LEVELS)) for level in range(_LEVELS)]
_LEVEL_Z = sum(count * math.exp(level) for level, count in enumerate(_LEVEL_COUNTS))


def _context_key(prefix: Sequence[int]) -> int:
    tail = ",".join(str(t) for t in prefix[-2:]).encode()
    return int.from_bytes(hashlib.blake2b(tail, digest_size=8).digest(), "little") % _VOCAB


def next_token_logprob(prefix: Sequence[int], token: int) -> float:
    """log p(*token* | *prefix*) under the stand-in's (normalized) next-token model."""
    level = ((token * _STRIDE + _context_key(prefix)) % _VOCAB) % _LEVELS
    spread = math.exp(level) / _LEVEL_Z
    if not prefix:
        return math.log(spread)
    copied = sum(1 for t in prefix if t == token) / len(prefix)
    return math.log((1.0 - _COPY) * spread + _COPY * copied)


# --------------------------------------------------------------------------- score


class ScoringRequest(BaseModel):
    """SGLang's ``ScoringRequest`` (unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore")

    query: str | list[int] | None = None
    items: str | list[str] | list[list[int]] | None = None
    embed_override_token_id: int | None = None
    query_embed_overrides: list[list[float]] | None = None
    item_embed_overrides: list[list[list[float]] | None] | None = None
    label_token_ids: list[int] | list[list[int]] | None = None
    apply_softmax: bool = False
    temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    return_token_logprobs: bool = False
    item_first: bool = False
    return_pooled_hidden_states: bool = False
    score_extraction_token: str | None = None
    model: str = "default"


def _label_lists(req: ScoringRequest, num_items: int) -> list[list[int]]:
    """``label_token_ids`` checked and spread per item (score_request's wording)."""
    labels: Any = req.label_token_ids
    if not isinstance(labels, list) or not labels:
        raise BadRequest("label_token_ids must be a nonempty list")
    if isinstance(labels[0], list):
        if len(labels) != num_items:
            raise BadRequest("label_token_ids must have one list per item")
        per_item: list[Any] = list(labels)
    else:
        per_item = [labels] * num_items
    for item_labels in per_item:
        if not isinstance(item_labels, list) or not item_labels:
            raise BadRequest("each item must have a nonempty candidate list")
        if any(type(t) is not int or t < 0 for t in item_labels):
            raise BadRequest("label_token_ids must contain nonnegative integers")
        if len(set(item_labels)) != len(item_labels):
            raise BadRequest("label_token_ids must not contain duplicate tokens")
        for token in item_labels:
            if token >= _VOCAB:
                raise BadRequest(f"Token ID {token} is out of vocabulary (vocab size: {_VOCAB})")
    return [list(item_labels) for item_labels in per_item]


def _probabilities(logprobs: list[float], apply_softmax: bool, temperature: float) -> list[float]:
    if not apply_softmax:
        return [math.exp(x) for x in logprobs]
    top = max(logprobs)
    weights = [math.exp((x - top) / temperature) for x in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def _softmax_row(row: list[float], temperature: float) -> list[float]:
    return _probabilities(row, True, temperature)


def _resolve_extraction_token(token: str) -> int:
    """``_resolve_score_extraction_token_id``: the string must be one token of the vocabulary."""
    pieces = tok.split(token)
    if pieces != [token]:
        raise BadRequest(f"score_extraction_token {token!r} did not resolve to a dedicated token id.")
    return tok.encode(token)[0]


class _Setwise:
    """The setwise readout's preconditions (score_request's order and wording)."""

    def __init__(self, state: ServerState) -> None:
        ignored = state.args.ignored_args
        self.radix_off = "--disable-radix-cache" in ignored
        self.whole_prefill = any(
            pair == ("--chunked-prefill-size", "-1") for pair in itertools.pairwise(ignored)
        ) or "--chunked-prefill-size=-1" in ignored
        self.auto_truncate = state.args.allow_auto_truncate
        self.is_embedding = state.is_embedding

    def check(self, item_first: bool) -> None:
        if self.is_embedding:
            raise BadRequest(
                "score_extraction_token_id is only supported for SequenceClassification models "
                "that pool the head per position (score_and_pool); model architecture(s) "
                "['Qwen2ForCausalLM'] do not (cross-encoder, reward, and embedding models pool "
                "a single vector and ignore the readout positions)."
            )
        if item_first:
            raise BadRequest("item_first is not supported with score_extraction_token_id.")
        if not self.radix_off:
            raise BadRequest(
                "score_extraction_token_id requires --disable-radix-cache because pooling "
                "positions are relative to the full prompt."
            )
        if not self.whole_prefill:
            raise BadRequest(
                "score_extraction_token_id requires --chunked-prefill-size -1 because all "
                "pooling positions must be processed in one prefill."
            )
        if self.auto_truncate:
            raise BadRequest(
                "score_extraction_token_id is not supported with --allow-auto-truncate: pooling "
                "positions are computed from the full prompt, and truncating the sequence would "
                "leave them pointing past the truncated length."
            )


def _no_query_anchor(query_ids: Sequence[int], anchor: int) -> None:
    if anchor in query_ids:
        raise BadRequest(
            "score-extraction token found in the shared query prefix; it must appear only "
            "within items, one per candidate."
        )


def _sequences(req: ScoringRequest, anchor: int | None) -> list[list[int]]:
    """The token ids of each scored sequence (``query + item`` or ``item + query``)."""
    query: Any = req.query
    items: Any = req.items
    if query is None:
        query = [] if isinstance(items, list) and isinstance(items[0], list) else ""
    has_embeds = req.query_embed_overrides is not None or req.item_embed_overrides is not None
    if isinstance(query, str) and not has_embeds and anchor is None:
        texts = [items] if isinstance(items, str) else list(items)  # token lists format as "[1, 2]", as there
        return [tok.encode(f"{item}{query}" if req.item_first else f"{query}{item}") for item in texts]
    if isinstance(query, list) and isinstance(items, list) and isinstance(items[0], list):
        if anchor is not None:
            _no_query_anchor(query, anchor)
        return [list(item) + list(query) if req.item_first else list(query) + list(item) for item in items]
    if anchor is not None and not has_embeds and isinstance(query, str):
        texts = [items] if isinstance(items, str) else list(items)
        if not all(isinstance(item, str) for item in texts):
            raise BadRequest(
                "query and items must both be text or both be token IDs when "
                "score_extraction_token_id is set."
            )
        if query:
            _no_query_anchor(tok.encode(query), anchor)
        return [tok.encode(f"{query}{item}") for item in texts]
    if has_embeds or anchor is not None:
        query_ids = tok.encode(query) if isinstance(query, str) else list(query)
        texts = [items] if isinstance(items, str) else list(items)
        item_ids = [tok.encode(i) if isinstance(i, str) else list(i) for i in texts]
        if anchor is not None:
            _no_query_anchor(query_ids, anchor)
        return [i + query_ids if req.item_first else query_ids + i for i in item_ids]
    raise BadRequest("Invalid combination of query/items types for score_request.")


def _score(req: ScoringRequest, state: ServerState) -> dict[str, Any]:
    """``score_request`` + the ScoringResponse body; raises BadRequest with SGLang's wording."""
    generation = not state.is_embedding
    # serving_score resolves the token before score_request checks anything
    extraction = req.score_extraction_token
    anchor = None if extraction is None else _resolve_extraction_token(extraction)
    if req.temperature != 1.0 and not req.apply_softmax:
        raise BadRequest("temperature requires apply_softmax=True")
    if req.return_token_logprobs and not generation:
        raise BadRequest("return_token_logprobs is only supported for CausalLM models")
    if generation and req.label_token_ids is None:
        raise BadRequest("label_token_ids is required for generation (CausalLM) models.")
    if req.items is None:
        raise BadRequest("items must be provided")
    token_logprobs: list[list[float]] | None = [] if req.return_token_logprobs else None
    scores: list[Any] = []
    pooled: list[Any] | None = None
    if not req.items:
        return _score_body(req, scores, None, token_logprobs, 0)
    num_items = 1 if isinstance(req.items, str) else len(req.items)
    labels = _label_lists(req, num_items) if generation else []
    has_embeds = req.query_embed_overrides is not None or req.item_embed_overrides is not None
    if has_embeds and req.embed_override_token_id is None:
        raise BadRequest(
            "embed_override_token_id is required when query_embed_overrides, "
            "item_embed_overrides, or stacked_query_item_embed_overrides are supplied."
        )
    if req.item_first and has_embeds:
        raise BadRequest("item_first is not supported when embeddings are supplied")
    if req.item_embed_overrides is not None and len(req.item_embed_overrides) != num_items:
        raise BadRequest(
            f"item_embed_overrides length ({len(req.item_embed_overrides)}) "
            f"must match items length ({num_items})."
        )
    if anchor is not None:
        _Setwise(state).check(req.item_first)
    sequences = _sequences(req, anchor)
    readouts: list[list[int]] = [[len(seq) - 1] for seq in sequences]
    if anchor is not None:
        readouts = [[i for i, t in enumerate(seq) if t == anchor] for seq in sequences]
        if any(not positions for positions in readouts):
            raise BadRequest(
                f"No score-extraction token (id={anchor}) found in one or more input(s); "
                "the client must render one per candidate."
            )
    if req.return_pooled_hidden_states and generation:
        raise BadRequest(
            "return_pooled_hidden_states is not supported for CausalLM models. It requires a "
            "model with a task-specific head (e.g. SequenceClassification or RewardModel)."
        )
    for seq in sequences:
        check_context(len(seq), 0, state.args.context_length)
    if not generation:
        pooled = [] if req.return_pooled_hidden_states else None
        for seq in sequences:
            vector = embed(seq)
            scores.append(_softmax_row(vector, req.temperature) if req.apply_softmax else vector)
            if pooled is not None:
                pooled.append(vector)
        return _score_body(req, scores, pooled, None, sum(len(s) for s in sequences))
    for seq, positions, item_labels in zip(sequences, readouts, labels, strict=True):
        rows = []
        for position in positions:
            prefix = seq[: position + 1]
            logprobs = [next_token_logprob(prefix, t) for t in item_labels]
            rows.append(_probabilities(logprobs, req.apply_softmax, req.temperature))
            if token_logprobs is not None and anchor is None:
                token_logprobs.append(logprobs)
        scores.append(rows if anchor is not None else rows[0])
    return _score_body(req, scores, None, token_logprobs, sum(len(s) for s in sequences))


def _score_body(
    req: ScoringRequest,
    scores: list[Any],
    pooled: list[Any] | None,
    token_logprobs: list[list[float]] | None,
    prompt_tokens: int,
) -> dict[str, Any]:
    return {
        "scores": scores,
        "pooled_hidden_states": pooled,
        "token_logprobs": token_logprobs,
        "model": req.model,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
            "reasoning_tokens": 0,
            "completion_tokens_details": None,
        },
        "object": "scoring",
    }


# --------------------------------------------------------------------------- rerank


class V1RerankReqInput(BaseModel):
    """SGLang's ``V1RerankReqInput`` (content parts kept loose: only their text is used)."""

    model_config = ConfigDict(extra="ignore")

    query: str | list[dict[str, Any]]
    documents: list[str | list[dict[str, Any]]]
    instruct: str | None = None
    top_n: int | None = None
    return_documents: bool = True

    @field_validator("top_n")
    @classmethod
    def _positive_top_n(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("Value error, parameter top_n should be larger than 0.")
        return value


class _RerankResult(BaseModel):
    """SGLang's ``RerankResponse`` (``document`` a string: a parts list fails as there)."""

    score: float
    document: str | None = None
    index: int
    meta_info: dict[str, Any] | None = None


def _text_of(content: str | list[dict[str, Any]]) -> str:
    """``_extract_text_from_content``: the text parts joined by spaces."""
    if isinstance(content, str):
        return content
    return " ".join(str(part.get("text") or "") for part in content if part.get("type") == "text")


def _rerank_problem(req: V1RerankReqInput) -> str | None:
    """``OpenAIServingRerank._validate_request`` (0.5.23 wording)."""
    if not req.query:
        return "Query cannot be empty"
    if isinstance(req.query, str) and not req.query.strip():
        return "Query cannot be empty or whitespace only"
    if not req.documents:
        return "Documents cannot be empty"
    for doc in req.documents:
        if not doc:
            return "Each document must be a non-empty string"
        if isinstance(doc, str) and not doc.strip():
            return "Each document cannot be empty or whitespace only"
    return None


def relevance(query_ids: Sequence[int], doc_ids: Sequence[int]) -> float:
    """The cross-encoder score of a pair: cosine of the stand-in's two embeddings."""
    return sum(a * b for a, b in zip(embed(query_ids), embed(doc_ids), strict=True))


# --------------------------------------------------------------------------- routes


def register(app: FastAPI, state: ServerState) -> None:
    """Add ``/v1/score`` and ``/v1/rerank`` to *app*."""
    args = state.args

    @app.post("/v1/score")
    async def score(request: Request) -> Response:
        try:
            req = await validated_body(request, ScoringRequest)
        except BadRequest as exc:
            return openai_error(exc.message, exc.err_type)
        rid = new_rid()
        state.enter(rid, "score", request)
        try:
            await state.unpaused.wait()
            body = _score(req, state)
        except BadRequest as exc:
            return openai_error(exc.message)
        finally:
            state.leave(rid)
        state.prompt_tokens_total += body["usage"]["prompt_tokens"]
        return JSONResponse(body)

    async def rerank(request: Request) -> Response:
        try:
            req = await validated_body(request, V1RerankReqInput)
        except BadRequest as exc:
            return openai_error(exc.message, exc.err_type)
        problem = _rerank_problem(req)
        if problem is not None:
            return openai_error(problem)
        query_ids = tok.encode(_text_of(req.query))
        pairs = [(query_ids, tok.encode(_text_of(doc))) for doc in req.documents]
        try:
            if not state.is_embedding:
                raise BadRequest(NOT_EMBEDDING)
            for q_ids, d_ids in pairs:
                check_context(len(q_ids) + len(d_ids), None, args.context_length)
        except BadRequest as exc:
            return openai_error(exc.message)
        results: list[_RerankResult] = []
        for index, ((q_ids, d_ids), doc) in enumerate(zip(pairs, req.documents, strict=True)):
            rid = new_rid()
            state.enter(rid, "embedding", request)
            try:
                await state.unpaused.wait()
                meta = {
                    "id": rid,
                    "finish_reason": {"type": "length", "length": 0},
                    "prompt_tokens": len(q_ids) + len(d_ids),
                    "weight_version": state.weight_version,
                    "num_retractions": 0,
                }
                try:
                    results.append(
                        _RerankResult.model_validate(
                            {
                                "score": relevance(q_ids, d_ids),
                                "document": doc if req.return_documents else None,
                                "index": index,
                                "meta_info": meta,
                            }
                        )
                    )
                except ValidationError as exc:  # a parts-list document, as SGLang's model refuses it
                    return openai_error(str(exc), "BadRequest")
            finally:
                state.leave(rid)
        state.prompt_tokens_total += sum(len(q) + len(d) for q, d in pairs)
        ranked = sorted(results, key=lambda r: r.score, reverse=True)
        if req.top_n is not None:
            ranked = ranked[: req.top_n]
        return JSONResponse([_rerank_item(r) for r in ranked])

    app.add_api_route("/v1/rerank", rerank, methods=["POST", "PUT"])


def _rerank_item(result: _RerankResult) -> dict[str, Any]:
    """RerankResponse's serializer: ``document`` is left out when None."""
    body = result.model_dump()
    if body["document"] is None:
        body.pop("document")
    return body
