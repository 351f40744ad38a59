"""Stand-in endpoints: bodies, status codes and auth, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import openai
import pytest

from sglang_backend._http import httpx
from tests.standin.conftest import MODEL, Standin


@pytest.fixture
async def http(shared: Standin) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client (the SDK's stack) with the shared server's key."""
    async with httpx.AsyncClient(base_url=shared.base_url, headers=shared.headers, timeout=10) as client:
        yield client


@pytest.fixture
async def anon(shared: Standin) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client (the SDK's stack) without a key."""
    async with httpx.AsyncClient(base_url=shared.base_url, timeout=10) as client:
        yield client


def _chat(content: str = "Hello there", **extra: object) -> dict[str, object]:
    return {"model": "anything", "messages": [{"role": "user", "content": content}], **extra}


async def test_auth_required_and_exemptions(shared: Standin, anon: httpx.AsyncClient) -> None:
    for path in ("/v1/models", "/model_info", "/server_info", "/"):
        reply = await anon.get(path)
        assert reply.status_code == 401, path
        assert reply.json() == {"error": "Unauthorized"}
    wrong = await anon.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    lower = await anon.get("/v1/models", headers={"Authorization": f"bearer {shared.api_key}"})
    assert lower.status_code == 200
    assert (await anon.get("/metrics")).status_code == 200
    assert (await anon.get("/ready")).status_code == 200
    assert (await anon.options("/v1/chat/completions")).status_code != 401
    assert (await anon.get("/unknown")).status_code == 401  # key check comes first


async def test_health_takes_a_generation(anon: httpx.AsyncClient) -> None:
    reply = await anon.get("/health")
    assert reply.status_code == 200
    assert reply.content == b""
    assert reply.elapsed.total_seconds() >= 0.9


async def test_info_endpoints(http: httpx.AsyncClient, shared: Standin) -> None:
    root = await http.get("/")
    assert root.json() == "SGLang is running"
    models = (await http.get("/v1/models")).json()
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == "standin-model"
    assert card["owned_by"] == "sglang"
    assert card["max_model_len"] == 4000
    assert (await http.get("/v1/models/standin-model")).json() == card
    missing = await http.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    for path in ("/model_info", "/get_model_info"):
        info = (await http.get(path)).json()
        assert info["model_path"] == MODEL
        assert info["is_generation"] is True
        assert info["weight_version"] == "default"
        assert info["tool_call_parser"] == "qwen25"
    for path in ("/server_info", "/get_server_info"):
        server = (await http.get(path)).json()
        assert server["version"] == "0.5.23"
        assert server["port"] == shared.port
        assert server["api_key"] == shared.api_key
        assert server["status"] == "ready"
        assert server["context_length"] == 4000
        assert server["max_req_input_len"] == 3999
        assert isinstance(server["internal_states"], list)
        assert server["frontend"] == "python"
    assert (await http.get("/nowhere")).json() == {"detail": "Not Found"}
    assert (await http.delete("/v1/models")).status_code == 405
    flushed = await http.post("/flush_cache")
    assert flushed.status_code == 200
    assert flushed.text.startswith("Cache flushed.")
    metrics = await http.get("/metrics")
    assert "sglang:num_requests_total" in metrics.text


async def test_tokenize_matches_usage(http: httpx.AsyncClient) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Count the tokens of this message, please!"},
    ]
    counted = (await http.post("/tokenize", json={"messages": messages})).json()
    assert counted["count"] == len(counted["tokens"])
    assert counted["max_model_len"] == 4000
    reply = (await http.post("/v1/chat/completions", json={"messages": messages})).json()
    assert reply["usage"]["prompt_tokens"] == counted["count"]
    plain = (await http.post("/v1/tokenize", json={"prompt": "Hello, world!"})).json()
    assert plain["count"] == 4
    batch = (await http.post("/tokenize", json={"prompt": ["a b", "c"]})).json()
    assert batch["count"] == [2, 1]
    text = (await http.post("/detokenize", json={"tokens": plain["tokens"]})).json()
    assert text == {"text": "Hello, world!"}
    both = await http.post("/tokenize", json={"prompt": "x", "messages": messages})
    assert both.status_code == 400


async def test_json_content_type_required(http: httpx.AsyncClient) -> None:
    reply = await http.post(
        "/v1/chat/completions", content=json.dumps(_chat()), headers={"Content-Type": "text/plain"}
    )
    assert reply.status_code == 400
    body = reply.json()
    assert body["object"] == "error"
    assert body["type"] == "Bad Request"
    assert body["code"] == 400
    assert "application/json" in body["message"]


# SGLang rejects schema violations (an unknown role) in request validation ("Bad Request") and
# the rest in its serving layer ("BadRequestError"); tests/sglang_real checks both wordings.
@pytest.mark.parametrize(
    ("body", "error_type", "fragment"),
    [
        ({"messages": []}, "BadRequestError", "Messages cannot be empty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "Bad Request", "role"),
        (
            {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
            "BadRequestError",
            "Tools",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "a"}}],
                "tool_choice": {"type": "function", "function": {"name": "b"}},
            },
            "BadRequestError",
            "not found",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
            },
            "BadRequestError",
            "schema",
        ),
    ],
)
async def test_validation_errors(
    http: httpx.AsyncClient, body: dict[str, object], error_type: str, fragment: str
) -> None:
    reply = await http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400
    error = reply.json()
    assert error["object"] == "error"
    assert error["type"] == error_type
    assert error["param"] is None
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"temperature": -1}, "temperature must be non-negative"),
        ({"top_p": 0}, "top_p must be in (0, 1]"),
        ({"max_tokens": 3995}, "Requested token count exceeds the model's maximum context length of 4000"),
    ],
)
async def test_sampling_and_context_errors(
    http: httpx.AsyncClient, extra: dict[str, object], fragment: str
) -> None:
    reply = await http.post("/v1/chat/completions", json=_chat(**extra))
    assert reply.status_code == 400
    assert reply.json()["type"] == "BadRequestError"
    assert fragment in reply.json()["message"]


async def test_prompt_longer_than_context(shared: Standin) -> None:
    client = openai.AsyncOpenAI(base_url=shared.base_url + "/v1", api_key=shared.api_key, max_retries=0)
    async with client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "word " * 5000}]
            )
    assert "is longer than the model's context length (4000 tokens)" in str(info.value)


async def test_unknown_fields_ignored(http: httpx.AsyncClient) -> None:
    reply = await http.post("/v1/chat/completions", json=_chat(no_such_field=1, another={"a": 1}))
    assert reply.status_code == 200


async def test_native_generate(http: httpx.AsyncClient) -> None:
    reply = (
        await http.post("/generate", json={"text": "Hi there", "sampling_params": {"max_new_tokens": 3}})
    ).json()
    assert reply["meta_info"]["finish_reason"] == {"type": "length", "length": 3}
    assert len(reply["output_ids"]) == 3
    assert reply["meta_info"]["prompt_tokens"] == 2
    assert len(reply["meta_info"]["id"]) == 32
    done = (await http.post("/generate", json={"text": "Hi"})).json()
    assert done["meta_info"]["finish_reason"] == {"type": "stop", "matched": 151645}
    batch = (
        await http.post("/generate", json={"text": ["a", "b"], "sampling_params": {"max_new_tokens": 2}})
    ).json()
    assert isinstance(batch, list)
    assert len(batch) == 2
    unknown = await http.post("/generate", json={"text": "a", "sampling_params": {"bogus": 1}})
    assert unknown.status_code == 400
    assert unknown.json()["error"].startswith("unknown field `bogus`")
    neither = await http.post("/generate", json={"sampling_params": {}})
    assert neither.status_code == 400
    assert "message" in neither.json()["error"]
    texts = []
    async with http.stream(
        "POST", "/generate", json={"text": "Hi", "stream": True, "sampling_params": {"max_new_tokens": 5}}
    ) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                texts.append(json.loads(line[6:]))
    assert [len(t["output_ids"]) for t in texts] == [1, 2, 3, 4, 5]
    assert texts[-1]["text"].startswith(texts[-2]["text"])
    assert texts[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 5}
    assert texts[0]["meta_info"]["finish_reason"] is None


async def test_completions(shared: Standin) -> None:
    client = openai.AsyncOpenAI(base_url=shared.base_url + "/v1", api_key=shared.api_key, max_retries=0)
    async with client:
        done = await client.completions.create(model="m", prompt="Once upon a time")
        assert done.object == "text_completion"
        assert done.choices[0].finish_reason == "length"
        assert done.usage is not None
        assert done.usage.completion_tokens == 16
        short = await client.completions.create(
            model="m", prompt="Hi", max_tokens=200, stop=["deterministic"]
        )
        assert short.choices[0].finish_reason == "stop"
        assert "deterministic" not in short.choices[0].text
        pieces = []
        stream = await client.completions.create(
            model="m", prompt="Hi", max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
        async for chunk in stream:
            pieces.append(chunk)
        assert pieces[-1].choices == []
        assert pieces[-1].usage is not None
        assert pieces[-2].choices[0].finish_reason == "length"
        with pytest.raises(openai.BadRequestError):
            await client.completions.create(model="m", prompt="")
