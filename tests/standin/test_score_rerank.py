"""/v1/score and /v1/rerank on the stand-in: SGLang 0.5.23's shapes, checks and consistency."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from sglang_backend._http import httpx
from tests.standin.conftest import Standin, StandinFactory


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Standin]]:
    factory = StandinFactory(tmp_path_factory.mktemp("score"))
    try:
        yield {
            "gen": factory.launch("--context-length", "64"),
            "embed": factory.launch("--is-embedding"),
            "setwise": factory.launch("--disable-radix-cache", "--chunked-prefill-size", "-1"),
        }
    finally:
        factory.close()


@pytest.fixture(scope="module")
def gen(servers: dict[str, Standin]) -> Iterator[httpx.Client]:
    server = servers["gen"]
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def embed(servers: dict[str, Standin]) -> Iterator[httpx.Client]:
    server = servers["embed"]
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as client:
        yield client


def ids(client: httpx.Client, text: str) -> list[int]:
    tokens: list[int] = client.post("/tokenize", json={"prompt": text}).json()["tokens"]
    return tokens


def ok(client: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    reply = client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def refused(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.post(path, json=body)
    assert reply.status_code == 400, reply.text
    error: dict[str, Any] = reply.json()
    assert error["object"] == "error"
    assert error["code"] == 400
    return error


# --------------------------------------------------------------------------- score


def test_score_probabilities_follow_the_prompt(gen: httpx.Client) -> None:
    yes, no = ids(gen, " yes")[0], ids(gen, " no")[0]
    body = {"query": "Is Paris in France? Answer", "items": [" yes", " no"], "label_token_ids": [yes, no]}
    reply = ok(gen, "/v1/score", body)
    assert reply["object"] == "scoring"
    assert reply["model"] == "default"
    assert reply["pooled_hidden_states"] is None
    assert reply["token_logprobs"] is None
    first, second = reply["scores"]
    assert all(0.0 < p < 1.0 for p in first + second)
    assert first[0] > first[1]
    assert second[1] > second[0]
    prompt = len(ids(gen, "Is Paris in France? Answer yes")) + len(ids(gen, "Is Paris in France? Answer no"))
    assert reply["usage"]["prompt_tokens"] == reply["usage"]["total_tokens"] == prompt
    assert reply["usage"]["completion_tokens"] == 0
    assert ok(gen, "/v1/score", body)["scores"] == reply["scores"]  # deterministic


def test_softmax_sums_to_one_and_temperature_flattens(gen: httpx.Client) -> None:
    labels = [ids(gen, w)[0] for w in (" red", " green", " blue")]
    body = {"query": "Pick a colour:", "items": [" red red", " blue"], "label_token_ids": labels,
            "apply_softmax": True, "return_token_logprobs": True}  # fmt: skip
    reply = ok(gen, "/v1/score", body)
    for row in reply["scores"]:
        assert math.isclose(sum(row), 1.0, rel_tol=1e-9)
    raw = ok(gen, "/v1/score", {**body, "apply_softmax": False})["scores"]
    for logprobs, row, probs in zip(reply["token_logprobs"], reply["scores"], raw, strict=True):
        assert [math.exp(x) for x in logprobs] == pytest.approx(probs)
        total = sum(math.exp(x) for x in logprobs)
        assert row == pytest.approx([math.exp(x) / total for x in logprobs])
    hot = ok(gen, "/v1/score", {**body, "temperature": 50.0})["scores"][0]
    assert max(hot) - min(hot) < max(reply["scores"][0]) - min(reply["scores"][0])


def test_token_id_inputs_and_item_first(gen: httpx.Client) -> None:
    query, item = ids(gen, "The sky is"), ids(gen, " blue")
    label = [item[0], ids(gen, " green")[0]]
    by_ids = ok(gen, "/v1/score", {"query": query, "items": [item], "label_token_ids": label})
    by_text = ok(gen, "/v1/score", {"query": "The sky is", "items": [" blue"], "label_token_ids": label})
    assert by_ids["scores"] == by_text["scores"]
    flipped = ok(
        gen, "/v1/score", {"query": query, "items": [item], "label_token_ids": label, "item_first": True}
    )
    assert flipped["scores"] != by_ids["scores"]
    per_item = ok(gen, "/v1/score", {"query": "x", "items": ["a", "b"], "label_token_ids": [[1, 2], [3]]})
    assert [len(row) for row in per_item["scores"]] == [2, 1]
    empty = ok(
        gen, "/v1/score", {"query": "x", "items": [], "label_token_ids": [1], "return_token_logprobs": True}
    )
    assert empty["scores"] == []
    assert empty["token_logprobs"] == []
    assert empty["usage"]["prompt_tokens"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"items": ["a"]}, "label_token_ids is required for generation (CausalLM) models."),
        ({"query": "q", "label_token_ids": [1]}, "items must be provided"),
        ({"items": ["a"], "label_token_ids": []}, "label_token_ids must be a nonempty list"),
        ({"items": ["a", "b"], "label_token_ids": [[1]]}, "label_token_ids must have one list per item"),
        ({"items": ["a"], "label_token_ids": [1, 1]}, "label_token_ids must not contain duplicate tokens"),
        ({"items": ["a"], "label_token_ids": [151645]},
         "Token ID 151645 is out of vocabulary (vocab size: 151643)"),
        ({"items": ["a"], "label_token_ids": [1], "temperature": 2.0},
         "temperature requires apply_softmax=True"),
        ({"query": [1, 2], "items": "a", "label_token_ids": [1]},
         "Invalid combination of query/items types for score_request."),
        ({"items": ["a"], "label_token_ids": [1], "return_pooled_hidden_states": True},
         "return_pooled_hidden_states is not supported for CausalLM models."),
        ({"items": ["a"], "label_token_ids": [1], "score_extraction_token": "a"},
         "score_extraction_token_id requires --disable-radix-cache"),
        ({"items": ["a"], "label_token_ids": [1], "query_embed_overrides": [[0.0]]},
         "embed_override_token_id is required when query_embed_overrides"),
        ({"query": "word " * 70, "items": ["a"], "label_token_ids": [1]},
         "is longer than the model's context length (64 tokens)."),
    ],
)  # fmt: skip
def test_score_refusals_in_sglang_wording(gen: httpx.Client, body: dict[str, Any], message: str) -> None:
    error = refused(gen, "/v1/score", body)
    assert message in error["message"]
    assert error["type"] == "BadRequestError"


def test_score_validation_errors_are_bad_request(gen: httpx.Client) -> None:
    error = refused(gen, "/v1/score", {"items": ["a"], "label_token_ids": [1], "temperature": 0})
    assert error["type"] == "Bad Request"
    assert "greater than 0" in error["message"]
    reply = gen.post("/v1/score", content=b'{"items": ["a"]}', headers={"content-type": "text/plain"})
    assert reply.status_code == 400
    assert "Unsupported Media Type" in reply.json()["message"]


def test_setwise_reads_out_at_every_anchor(servers: dict[str, Standin]) -> None:
    server = servers["setwise"]
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as client:
        body = {"query": "Rank:", "items": [" A | B |", " C |"], "label_token_ids": [1, 2, 3],
                "score_extraction_token": " |", "apply_softmax": True}  # fmt: skip
        reply = ok(client, "/v1/score", body)
        assert [len(matrix) for matrix in reply["scores"]] == [2, 1]
        assert all(math.isclose(sum(row), 1.0) for matrix in reply["scores"] for row in matrix)
        error = refused(client, "/v1/score", {**body, "items": [" A"]})
        assert "No score-extraction token" in error["message"]
        error = refused(client, "/v1/score", {**body, "query": "Rank |"})
        assert "found in the shared query prefix" in error["message"]
        error = refused(client, "/v1/score", {**body, "score_extraction_token": "two words"})
        assert (
            error["message"] == "score_extraction_token 'two words' did not resolve to a dedicated token id."
        )


def test_score_on_an_embedding_model_returns_pooled_rows(embed: httpx.Client) -> None:
    reply = ok(embed, "/v1/score", {"query": "a b", "items": [" c"], "apply_softmax": True,
                                    "return_pooled_hidden_states": True})  # fmt: skip
    (row,) = reply["scores"]
    assert len(row) == 896
    assert math.isclose(sum(row), 1.0)
    assert len(reply["pooled_hidden_states"][0]) == 896
    error = refused(embed, "/v1/score", {"items": ["a"], "return_token_logprobs": True})
    assert error["message"] == "return_token_logprobs is only supported for CausalLM models"


# --------------------------------------------------------------------------- rerank


def test_rerank_orders_documents_by_relevance(embed: httpx.Client) -> None:
    documents = [
        "Bananas are yellow fruit.",
        "Paris is the capital of France.",
        "The capital of Italy is Rome.",
    ]
    reply = ok(embed, "/v1/rerank", {"query": "What is the capital of France?", "documents": documents})
    assert next(item["index"] for item in reply) == 1
    assert [item["document"] for item in reply] == [documents[item["index"]] for item in reply]
    scores = [item["score"] for item in reply]
    assert scores == sorted(scores, reverse=True)
    assert scores[-1] < scores[0]
    meta = reply[0]["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 0}
    assert meta["prompt_tokens"] > 0
    top = ok(embed, "/v1/rerank", {"query": "capital of France", "documents": documents, "top_n": 1,
                                   "return_documents": False})  # fmt: skip
    assert len(top) == 1
    assert "document" not in top[0]
    assert top[0]["index"] == 1
    put = embed.put("/v1/rerank", json={"query": "capital", "documents": documents})
    assert put.status_code == 200
    assert len(put.json()) == 3


def test_rerank_content_parts_are_read_as_text(embed: httpx.Client) -> None:
    parts = [{"type": "text", "text": "capital of France"}]
    reply = ok(embed, "/v1/rerank", {"query": parts, "documents": ["Paris capital of France", "bananas"],
                                     "return_documents": False})  # fmt: skip
    assert reply[0]["index"] == 0


@pytest.mark.parametrize(
    ("body", "message", "kind"),
    [
        ({"query": "  ", "documents": ["a"]}, "Query cannot be empty or whitespace only", "BadRequestError"),
        ({"query": "", "documents": ["a"]}, "Query cannot be empty", "BadRequestError"),
        ({"query": "q", "documents": []}, "Documents cannot be empty", "BadRequestError"),
        ({"query": "q", "documents": ["a", " "]}, "Each document cannot be empty or whitespace only",
         "BadRequestError"),
        ({"query": "q", "documents": ["a"], "top_n": 0},
         "Value error, Value error, parameter top_n should be larger than 0.", "Bad Request"),
        ({"query": "q"}, "Field required", "Bad Request"),
    ],
)  # fmt: skip
def test_rerank_refusals(embed: httpx.Client, body: dict[str, Any], message: str, kind: str) -> None:
    error = refused(embed, "/v1/rerank", body)
    assert message in error["message"]
    assert error["type"] == kind


def test_rerank_needs_an_embedding_server(gen: httpx.Client) -> None:
    error = refused(gen, "/v1/rerank", {"query": "q", "documents": ["a"]})
    assert error["message"].startswith("This model does not appear to be an embedding model by default.")
