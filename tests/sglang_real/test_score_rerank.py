"""/v1/score and /v1/rerank from the stand-in, judged by SGLang 0.5.23's own models and source.

Every answer must validate with SGLang's ``ScoringResponse`` / ``RerankResponse`` (and
declare nothing they lack); every body SGLang's request model refuses must be the
stand-in's "Bad Request" 400 and every body it accepts must get past validation; each
refusal's wording must be in SGLang's source.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from sglang.srt.entrypoints.openai import protocol

from sglang_backend._http import httpx
from tests.standin.conftest import Standin, StandinFactory

from .conftest import judge, sglang_source_says

MIXIN = "srt/managers/tokenizer_manager_score_mixin.py"
RERANK = "srt/entrypoints/openai/serving_rerank.py"


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, httpx.Client]]:
    factory = StandinFactory(tmp_path_factory.mktemp("score"))
    opened: dict[str, httpx.Client] = {}
    try:
        setwise = ("--disable-radix-cache", "--chunked-prefill-size", "-1")
        for name, flags in (("gen", ()), ("embed", ("--is-embedding",)), ("setwise", setwise)):
            server: Standin = factory.launch(*flags)
            opened[name] = httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30)
        yield opened
    finally:
        for client in opened.values():
            client.close()
        factory.close()


SCORE_BODIES: list[tuple[str, str, dict[str, Any]]] = [
    ("text", "gen", {"query": "Is it? ", "items": ["yes", "no"], "label_token_ids": [9, 7]}),
    ("softmax", "gen", {"query": "Q", "items": ["a", "b"], "label_token_ids": [1, 2, 3],
                        "apply_softmax": True, "temperature": 0.5, "return_token_logprobs": True}),
    ("ids", "gen", {"query": [1, 2, 3], "items": [[4], [5, 6]], "label_token_ids": [[1], [2, 3]]}),
    ("one-item", "gen", {"query": "Q", "items": "a", "label_token_ids": [1]}),
    ("setwise", "setwise", {"query": "Rank:", "items": [" A | B |"], "label_token_ids": [1, 2],
                            "score_extraction_token": " |"}),
    ("embedding", "embed", {"query": "a", "items": ["b", "c"], "apply_softmax": True,
                            "return_pooled_hidden_states": True}),
]  # fmt: skip


@pytest.mark.parametrize(("server", "body"), [b[1:] for b in SCORE_BODIES], ids=[b[0] for b in SCORE_BODIES])
def test_score_answers_validate_as_scoring_response(
    clients: dict[str, httpx.Client], server: str, body: dict[str, Any]
) -> None:
    protocol.ScoringRequest.model_validate(body)  # SGLang accepts the request ...
    reply = clients[server].post("/v1/score", json=body)
    assert reply.status_code == 200, reply.text
    parsed = judge(protocol.ScoringResponse, reply.json())  # ... and its model takes the answer
    assert parsed.object == "scoring"
    assert parsed.usage is not None
    if body.get("apply_softmax"):
        rows = parsed.scores if server != "setwise" else [r for m in parsed.scores for r in m]
        assert all(math.isclose(sum(row), 1.0, rel_tol=1e-9) for row in rows)


BAD_SCORES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no-labels", {"items": ["a"]}, "label_token_ids is required for generation (CausalLM) models.", MIXIN),
    ("no-items", {"label_token_ids": [1]}, "items must be provided", MIXIN),
    ("dup", {"items": ["a"], "label_token_ids": [1, 1]},
     "label_token_ids must not contain duplicate tokens", MIXIN),
    ("per-item", {"items": ["a"], "label_token_ids": [[1], [2]]},
     "label_token_ids must have one list per item", MIXIN),
    ("vocab", {"items": ["a"], "label_token_ids": [200000]}, "is out of vocabulary (vocab size: ", MIXIN),
    ("temp", {"items": ["a"], "label_token_ids": [1], "temperature": 3},
     "temperature requires apply_softmax=True", MIXIN),
    ("combo", {"query": [1], "items": ["a"], "label_token_ids": [1]},
     "Invalid combination of query/items types for score_request.", MIXIN),
    ("pooled", {"items": ["a"], "label_token_ids": [1], "return_pooled_hidden_states": True},
     "return_pooled_hidden_states is not supported for CausalLM models. ", MIXIN),
    ("radix", {"items": ["a |"], "label_token_ids": [1], "score_extraction_token": " |"},
     "requires --disable-radix-cache because ", MIXIN),
    ("embeds", {"items": ["a"], "label_token_ids": [1], "query_embed_overrides": [[1.0]]},
     "embed_override_token_id is required when query_embed_overrides, ", MIXIN),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message", "source"), [b[1:] for b in BAD_SCORES], ids=[b[0] for b in BAD_SCORES]
)
def test_score_refusals_are_sglangs(
    clients: dict[str, httpx.Client], body: dict[str, Any], message: str, source: str
) -> None:
    protocol.ScoringRequest.model_validate(body)  # a serving-level refusal, not a validation one
    reply = clients["gen"].post("/v1/score", json=body)
    assert reply.status_code == 400
    error = judge(protocol.ErrorResponse, reply.json())
    assert error.type == "BadRequestError"
    assert message in error.message
    sglang_source_says(source, message.split("(vocab", maxsplit=1)[0].rstrip(": ").split("{")[0])


@pytest.mark.parametrize(
    "body",
    [{"items": ["a"], "temperature": 0}, {"items": ["a"], "temperature": "hot"}, {"query": {"x": 1}},
     {"items": [1.5]}, {"label_token_ids": "x"}],
)  # fmt: skip
def test_score_bodies_sglang_refuses_are_validation_errors(
    clients: dict[str, httpx.Client], body: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        protocol.ScoringRequest.model_validate(body)
    reply = clients["gen"].post("/v1/score", json=body)
    assert reply.status_code == 400
    assert judge(protocol.ErrorResponse, reply.json()).type == "Bad Request"


RERANKS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {"query": "capital of France", "documents": ["Paris is the capital of France", "bananas"]}),
    ("top-n", {"query": "q", "documents": ["a", "b", "c"], "top_n": 2, "return_documents": False}),
    ("parts", {"query": [{"type": "text", "text": "q"}], "documents": ["a q"], "instruct": "Judge"}),
]


@pytest.mark.parametrize("body", [r[1] for r in RERANKS], ids=[r[0] for r in RERANKS])
def test_rerank_answers_validate_as_rerank_responses(
    clients: dict[str, httpx.Client], body: dict[str, Any]
) -> None:
    protocol.V1RerankReqInput.model_validate(body)
    reply = clients["embed"].post("/v1/rerank", json=body)
    assert reply.status_code == 200, reply.text
    items = [judge(protocol.RerankResponse, raw) for raw in reply.json()]
    assert len(items) == min(len(body["documents"]), body.get("top_n") or 99)
    assert [i.score for i in items] == sorted((i.score for i in items), reverse=True)
    for raw, item in zip(reply.json(), items, strict=True):
        assert raw == item.model_dump()  # SGLang's serializer: no "document" key when not returned


@pytest.mark.parametrize(
    ("body", "message"),
    [({"query": " ", "documents": ["a"]}, "Query cannot be empty or whitespace only"),
     ({"query": "q", "documents": []}, "Documents cannot be empty"),
     ({"query": "q", "documents": [""]}, "Each document must be a non-empty string")],
)  # fmt: skip
def test_rerank_refusals_are_sglangs(
    clients: dict[str, httpx.Client], body: dict[str, Any], message: str
) -> None:
    protocol.V1RerankReqInput.model_validate(body)
    reply = clients["embed"].post("/v1/rerank", json=body)
    assert reply.status_code == 400
    assert judge(protocol.ErrorResponse, reply.json()).message == message
    sglang_source_says(RERANK, f'"{message}"')


def test_rerank_top_n_zero_is_sglangs_validation_error(clients: dict[str, httpx.Client]) -> None:
    body = {"query": "q", "documents": ["a"], "top_n": 0}
    with pytest.raises(ValidationError) as caught:
        protocol.V1RerankReqInput.model_validate(body)
    reply = clients["embed"].post("/v1/rerank", json=body)
    assert reply.status_code == 400
    error = judge(protocol.ErrorResponse, reply.json())
    assert error.type == "Bad Request"
    assert caught.value.errors()[0]["msg"] in error.message


def test_rerank_on_a_generation_model_is_the_embedding_refusal(clients: dict[str, httpx.Client]) -> None:
    reply = clients["gen"].post("/v1/rerank", json={"query": "q", "documents": ["a"]})
    assert reply.status_code == 400
    message = judge(protocol.ErrorResponse, reply.json()).message
    sglang_source_says("srt/managers/tokenizer_manager.py", message.split(". ")[0])
