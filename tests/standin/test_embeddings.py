"""/v1/embeddings and /encode on an ``--is-embedding`` stand-in, and their refusal on a generation model."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from sglang_backend._http import httpx
from tests.standin.conftest import MODEL, Standin, StandinFactory


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    factory = StandinFactory(tmp_path_factory.mktemp("embed"))
    try:
        yield factory.launch("--is-embedding")  # with the warm-up: it goes through /encode
    finally:
        factory.close()


@pytest.fixture
async def http(embedder: Standin) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=embedder.base_url, headers=embedder.headers, timeout=10) as client:
        yield client


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_embeddings_shapes_and_usage(http: httpx.AsyncClient) -> None:
    one = (await http.post("/v1/embeddings", json={"input": "hello world", "model": "m"})).json()
    assert one["object"] == "list"
    assert one["model"] == MODEL
    assert [d["index"] for d in one["data"]] == [0]
    assert one["data"][0]["object"] == "embedding"
    vector = one["data"][0]["embedding"]
    assert abs(_norm(vector) - 1.0) < 1e-9
    tokens = (await http.post("/tokenize", json={"prompt": "hello world"})).json()["tokens"]
    assert one["usage"]["prompt_tokens"] == one["usage"]["total_tokens"] == len(tokens)
    again = (await http.post("/v1/embeddings", json={"input": [tokens]})).json()
    assert again["data"][0]["embedding"] == vector  # same tokens, same vector
    many = (await http.post("/v1/embeddings", json={"input": ["hello world", "hello there", "zebra"]})).json()
    a, b, c = (d["embedding"] for d in many["data"])
    assert a == vector
    assert _cos(a, b) > _cos(a, c)  # shared words point the same way
    ids = (await http.post("/v1/embeddings", json={"input": [1, 2, 3]})).json()
    assert ids["usage"]["prompt_tokens"] == 3


async def test_base64_is_little_endian_float32(http: httpx.AsyncClient) -> None:
    floats = (await http.post("/v1/embeddings", json={"input": "abc"})).json()["data"][0]["embedding"]
    packed = (await http.post("/v1/embeddings", json={"input": "abc", "encoding_format": "base64"})).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == len(floats)
    assert all(abs(x - y) < 1e-6 for x, y in zip(decoded, floats, strict=True))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": ""}, "Input cannot be empty"),
        ({"input": "   "}, "Input cannot be empty or whitespace only"),
        ({"input": ["a", " "]}, "Input at index 1 cannot be empty or whitespace only"),
        ({"input": [1, -2]}, "Token ID at index 1 must be non-negative"),
        (
            {"input": "a", "encoding_format": "int8"},
            "encoding_format must be either 'float' or 'base64', got 'int8'",
        ),
    ],
)
async def test_embedding_validation(http: httpx.AsyncClient, body: dict[str, object], message: str) -> None:
    reply = await http.post("/v1/embeddings", json=body)
    assert reply.status_code == 400
    assert reply.json() == {
        "object": "error",
        "message": message,
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }


async def test_dimensions_refused_without_matryoshka(http: httpx.AsyncClient) -> None:
    reply = await http.post("/v1/embeddings", json={"input": "a", "dimensions": 64})
    assert reply.status_code == 400
    assert reply.json()["message"] == (
        f"Model '{MODEL}' does not support matryoshka representation, "
        "changing output dimensions will lead to poor results."
    )


async def test_openai_sdk_embeddings(embedder: Standin) -> None:
    async with openai.AsyncOpenAI(base_url=f"{embedder.base_url}/v1", api_key=embedder.api_key) as client:
        result = await client.embeddings.create(model="m", input=["one", "two"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 896
    assert result.usage.prompt_tokens == 2


async def test_encode_native(http: httpx.AsyncClient, embedder: Standin) -> None:
    one = (await http.post("/encode", json={"text": "hello world", "rid": "r1"})).json()
    assert one["meta_info"] == {
        "id": "r1",
        "finish_reason": {"type": "length", "length": 0},
        "prompt_tokens": 2,
        "weight_version": "default",
        "num_retractions": 0,
    }
    assert abs(_norm(one["embedding"]) - 1.0) < 1e-9
    batch = (await http.post("/encode", json={"input_ids": [[1, 2], [3]]})).json()
    assert [x["meta_info"]["prompt_tokens"] for x in batch] == [2, 1]
    info = (await http.get("/model_info")).json()
    assert info["is_generation"] is False
    assert "POST /encode" in embedder.stdout()  # the warm-up's access line


async def test_generation_model_refuses_embeddings(standins: StandinFactory) -> None:
    server = standins.launch("--skip-server-warmup")
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=10) as client:
        reply = await client.post("/v1/embeddings", json={"input": "x"})
        assert reply.status_code == 400
        assert reply.json()["message"].startswith(
            "This model does not appear to be an embedding model by default."
        )
        native = await client.post("/encode", json={"text": "x"})
        assert native.status_code == 400
        assert "Please add `--is-embedding`" in native.json()["error"]["message"]
