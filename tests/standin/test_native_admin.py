"""The stand-in's native and admin surface over real HTTP: /generate, abort, LoRA, admin key, weights."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from sglang_backend._http import httpx
from tests.standin.conftest import MODEL, Standin, StandinFactory

ADMIN_KEY = secrets.token_hex(16)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """Slow tokens (aborts land mid-way), LoRA with one adapter, an admin key, a reasoning parser."""
    factory = StandinFactory(tmp_path_factory.mktemp("native"))
    try:
        yield factory.launch(
            "--standin-token-delay", "0.03",
            "--enable-lora", "--lora-paths", "first=/adapters/first",
            "--admin-api-key", ADMIN_KEY,
            "--reasoning-parser", "qwen3",
        )  # fmt: skip
    finally:
        factory.close()


@pytest.fixture
async def http(server: Standin) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=30) as client:
        yield client


@pytest.fixture
async def admin(server: Standin) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as client:
        yield client


def _events(server: Standin, name: str) -> list[dict[str, Any]]:
    return [e for e in server.events() if e["event"] == name]


async def _sse(response: httpx.Response) -> list[Any]:
    out: list[Any] = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# --------------------------------------------------------------------------- /generate


async def test_generate_lists_and_n(http: httpx.AsyncClient) -> None:
    one = (await http.post("/generate", json={"text": "Hi", "sampling_params": {"max_new_tokens": 3}})).json()
    assert isinstance(one, dict)
    assert len(one["meta_info"]["id"]) == 32
    batch = await http.post(
        "/generate", json={"text": ["a b", "c"], "sampling_params": {"max_new_tokens": 2}}
    )
    assert [len(x["output_ids"]) for x in batch.json()] == [2, 2]
    ids = await http.post(
        "/generate", json={"input_ids": [[1, 2], [3]], "sampling_params": {"max_new_tokens": 1}}
    )
    assert [x["meta_info"]["prompt_tokens"] for x in ids.json()] == [2, 1]
    many = await http.post(
        "/generate", json={"text": "x", "rid": "abc", "sampling_params": {"n": 3, "max_new_tokens": 1}}
    )
    assert [x["meta_info"]["id"] for x in many.json()] == ["abc_0", "abc_1", "abc_2"]
    # both given: input_ids wins (0.5.23 only refuses text + input_ids + input_embeds)
    both = await http.post(
        "/generate", json={"text": "a b c d", "input_ids": [5], "sampling_params": {"max_new_tokens": 1}}
    )
    assert both.json()["meta_info"]["prompt_tokens"] == 1


async def test_generate_errors(http: httpx.AsyncClient) -> None:
    unknown = await http.post("/generate", json={"text": "x", "sampling_params": {"max_tokens": 3}})
    assert unknown.status_code == 400
    assert unknown.json()["error"].startswith(
        "unknown field `max_tokens`, expected one of `max_new_tokens`, `stop`"
    )
    neither = await http.post("/generate", json={"sampling_params": {}})
    assert neither.status_code == 400
    assert neither.json() == {
        "error": {"message": "Either text, input_ids or input_embeds should be provided."}
    }
    # a streamed request error is a 200 stream: the error event, then [DONE]
    async with http.stream(
        "POST", "/generate", json={"text": "x", "stream": True, "sampling_params": {"temperature": -1}}
    ) as reply:
        assert reply.status_code == 200
        events = await _sse(reply)
    assert events[-1] == "[DONE]"
    assert events[0]["error"] == {
        "message": "temperature must be non-negative, got -1.",
        "type": "invalid_request_error",
        "code": 400,
        "retryable": False,
    }


async def test_generate_reasoning_tokens(http: httpx.AsyncClient) -> None:
    reply = (
        await http.post(
            "/generate", json={"text": "think about it", "sampling_params": {"max_new_tokens": 64}}
        )
    ).json()
    assert reply["text"].startswith("<think>")
    assert 0 < reply["meta_info"]["reasoning_tokens"] < reply["meta_info"]["completion_tokens"]


# --------------------------------------------------------------------------- abort


async def test_abort_stream_by_rid(
    http: httpx.AsyncClient, admin: httpx.AsyncClient, server: Standin
) -> None:
    rid = secrets.token_hex(8)
    body = {
        "text": "one two three four five six",
        "rid": rid,
        "stream": True,
        "sampling_params": {"max_new_tokens": 100, "ignore_eos": True},
    }
    async with http.stream("POST", "/generate", json=body) as reply:
        events: list[Any] = []
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
            if len(events) == 3:
                # admin-optional: the normal key is refused once an admin key is set
                refused = await http.post("/abort_request", json={"rid": rid})
                assert refused.status_code == 401
                assert (await admin.post("/abort_request", json={"rid": rid})).status_code == 200
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["meta_info"]["finish_reason"] == {
        "type": "abort", "message": "Aborted", "status_code": None, "err_type": None,
    }  # fmt: skip
    assert len(last["output_ids"]) < 100
    assert [e["rid"] for e in _events(server, "request") if e["rid"] == rid] == [rid]
    assert any(e["rid"] == rid and e["reason"] == "abort_request" for e in _events(server, "abort"))


async def test_abort_all_ends_every_kind(http: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
    long = {"max_new_tokens": 200, "ignore_eos": True}

    async def generate() -> Any:
        return (await http.post("/generate", json={"text": "x", "sampling_params": long})).json()

    async def chat() -> Any:
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 200,
            "ignore_eos": True,
            "stream": True,
        }
        async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
            return await _sse(reply)

    async def completion() -> Any:
        body = {"model": "m", "prompt": "hi", "max_tokens": 200, "ignore_eos": True, "stream": True}
        async with http.stream("POST", "/v1/completions", json=body) as reply:
            return await _sse(reply)

    tasks = [asyncio.ensure_future(f()) for f in (generate, chat, completion)]
    await asyncio.sleep(0.5)
    assert (await admin.post("/abort_request", json={"abort_all": True})).status_code == 200
    native, chat_events, completion_events = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert native["meta_info"]["finish_reason"]["type"] == "abort"
    assert native["meta_info"]["completion_tokens"] < 200
    finishes = [c["choices"][0]["finish_reason"] for c in chat_events[:-1] if c.get("choices")]
    assert finishes[-1] == "abort"
    finishes = [c["choices"][0]["finish_reason"] for c in completion_events[:-1] if c.get("choices")]
    assert finishes[-1] == "abort"


async def test_abort_request_body_and_unknown_rid(admin: httpx.AsyncClient, server: Standin) -> None:
    assert (await admin.post("/abort_request", json={"rid": "nobody-has-this"})).status_code == 200
    assert not any(e["rid"] == "nobody-has-this" for e in _events(server, "abort"))  # nothing was stopped
    listed = await admin.post("/abort_request", json={"rid": ["a", "b"]})
    assert listed.status_code == 422  # AbortReq.rid is a string in 0.5.23


async def _stream_and_leave(server: Standin) -> str:
    """Start a long /generate stream, read one event, close the connection; return its rid."""
    rid = secrets.token_hex(8)
    body = {
        "text": "x",
        "rid": rid,
        "stream": True,
        "sampling_params": {"max_new_tokens": 200, "ignore_eos": True},
    }
    async with (
        httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=30) as client,
        client.stream("POST", "/generate", json=body) as reply,
    ):
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                break  # leave after the first event: the connection closes
    return rid


async def test_client_disconnect_aborts(server: Standin) -> None:
    rid = await _stream_and_leave(server)
    for _ in range(100):
        if any(e["rid"] == rid and e["reason"] == "disconnect" for e in _events(server, "abort")):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"no disconnect abort for {rid}: {_events(server, 'abort')}")


# --------------------------------------------------------------------------- LoRA


async def test_lora_load_use_unload(
    http: httpx.AsyncClient, admin: httpx.AsyncClient, server: Standin
) -> None:
    models = (await http.get("/v1/models")).json()["data"]
    assert [m["id"] for m in models] == [MODEL, "first"]
    assert models[1]["parent"] == MODEL
    assert models[1]["max_model_len"] is None
    assert (
        await http.post("/load_lora_adapter", json={"lora_name": "x", "lora_path": "/p"})
    ).status_code == 401
    loaded = await admin.post(
        "/load_lora_adapter", json={"lora_name": "second", "lora_path": "/adapters/second", "pinned": True}
    )
    assert loaded.status_code == 200
    assert loaded.json()["success"] is True
    assert loaded.json()["loaded_adapters"] == {"first": "/adapters/first", "second": "/adapters/second"}
    again = await admin.post("/load_lora_adapter", json={"lora_name": "second", "lora_path": "/p"})
    assert again.status_code == 400
    assert again.json()["error_message"] == "Failed to load LoRA adapter second because it is already loaded"
    used = await http.post(
        "/generate", json={"text": "x", "lora_path": "second", "sampling_params": {"max_new_tokens": 1}}
    )
    assert used.status_code == 200
    never = await http.post(
        "/generate", json={"text": "x", "lora_path": "nope", "sampling_params": {"max_new_tokens": 1}}
    )
    assert never.status_code == 400
    assert never.json()["error"]["message"].startswith("Got LoRA adapter that has never been loaded: nope\n")
    gone = await admin.post("/unload_lora_adapter", json={"lora_name": "second"})
    assert gone.json()["success"] is True
    assert [m["id"] for m in (await http.get("/v1/models")).json()["data"]] == [MODEL, "first"]
    missing = await admin.post("/unload_lora_adapter", json={"lora_name": "second"})
    assert missing.status_code == 400
    assert (
        missing.json()["error_message"]
        == "LoRA with name second does not exist. Loaded LoRAs: dict_keys(['first'])"
    )
    names = [(e["event"], e["name"]) for e in server.events() if e["event"] in {"load_lora", "unload_lora"}]
    assert names[:2] == [("load_lora", "second"), ("unload_lora", "second")]


async def test_lora_off(standins: StandinFactory) -> None:
    server = standins.launch("--skip-server-warmup")
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=10) as client:
        reply = await client.post("/generate", json={"text": "x", "lora_path": "a"})
        assert reply.status_code == 400
        assert reply.json()["error"]["message"].startswith(
            "LoRA adapter 'a' was requested, but LoRA is not enabled."
        )
        load = await client.post("/load_lora_adapter", json={"lora_name": "a", "lora_path": "/a"})
        assert load.status_code == 400
        assert (
            load.json()["error_message"] == "LoRA is not enabled. Please set `--enable-lora` to enable LoRA."
        )


# --------------------------------------------------------------------------- weights, cache, memory, pause


async def test_weights_flush_memory_pause(
    http: httpx.AsyncClient, admin: httpx.AsyncClient, server: Standin
) -> None:
    assert (await http.post("/update_weights_from_disk", json={"model_path": "/new"})).status_code == 401
    update = await admin.post(
        "/update_weights_from_disk", json={"model_path": "/new", "weight_version": "v2"}
    )
    assert update.json() == {
        "success": True,
        "message": "Succeeded to update model weights. Weight version updated to v2.",
        "num_paused_requests": 0,
    }
    info = (await http.get("/model_info")).json()
    assert (info["model_path"], info["weight_version"]) == ("/new", "v2")
    meta = (
        await http.post("/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 1}})
    ).json()["meta_info"]
    assert meta["weight_version"] == "v2"
    assert (await admin.post("/update_weights_from_disk", json={})).status_code == 422
    flushed = await admin.post("/flush_cache")
    assert flushed.status_code == 200
    assert flushed.text.startswith("Cache flushed.")
    assert (await admin.post("/release_memory_occupation", json={"tags": ["kv_cache"]})).json() is None
    assert (await admin.post("/resume_memory_occupation", json={"tags": ["kv_cache"]})).status_code == 200
    paused = await admin.post("/pause_generation", json={"mode": "in_place"})
    assert paused.json() == {"message": "Generation paused successfully.", "status": "ok"}
    assert (await http.get("/ready")).status_code == 503
    waiting = asyncio.ensure_future(
        http.post("/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 1}})
    )
    await asyncio.sleep(0.3)
    assert not waiting.done()  # new requests wait while paused, as SGLang's is_pause_cond
    resumed = await admin.post("/continue_generation", json={})
    assert resumed.json() == {"message": "Generation continued successfully.", "status": "ok"}
    assert (await asyncio.wait_for(waiting, 10)).status_code == 200
    assert (await http.get("/ready")).status_code == 200
    kinds = [e["event"] for e in server.events()]
    for name in ("update_weights", "flush_cache", "release_memory", "resume_memory"):
        assert name in kinds, name
    assert _events(server, "release_memory")[-1]["tags"] == ["kv_cache"]


async def test_generate_logprobs_shapes(http: httpx.AsyncClient) -> None:
    body = {
        "text": "hello there friend",
        "return_logprob": True,
        "top_logprobs_num": 2,
        "return_text_in_logprobs": True,
        "logprob_start_len": 0,
        "token_ids_logprob": [5, 7],
        "sampling_params": {"max_new_tokens": 6},
    }
    first = (await http.post("/generate", json=body)).json()
    meta = first["meta_info"]
    count = meta["completion_tokens"]
    assert [t[1] for t in meta["output_token_logprobs"]] == first["output_ids"]
    assert all(
        isinstance(t[0], float) and t[0] <= 0 and isinstance(t[2], str) for t in meta["output_token_logprobs"]
    )
    assert len(meta["output_top_logprobs"]) == count
    assert all(1 <= len(top) <= 2 for top in meta["output_top_logprobs"])
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"]
    assert meta["input_token_logprobs"][0][0] is None  # the first prompt token has no logprob
    assert [t[1] for t in meta["output_token_ids_logprobs"][0]] == [5, 7]
    again = (await http.post("/generate", json=body)).json()
    assert again["meta_info"]["output_token_logprobs"] == meta["output_token_logprobs"]  # deterministic
    plain = (await http.post("/generate", json={**body, "return_text_in_logprobs": False})).json()
    assert all(t[2] is None for t in plain["meta_info"]["output_token_logprobs"])
    off = (await http.post("/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 2}})).json()
    assert "output_token_logprobs" not in off["meta_info"]


async def test_generate_seeded_sampling_and_regex(http: httpx.AsyncClient) -> None:
    params = {"n": 3, "temperature": 1.0, "sampling_seed": 11, "max_new_tokens": 40}
    one = (await http.post("/generate", json={"text": "pick", "sampling_params": params})).json()
    two = (await http.post("/generate", json={"text": "pick", "sampling_params": params})).json()
    assert [x["text"] for x in one] == [x["text"] for x in two]
    regex = (
        await http.post(
            "/generate", json={"text": "x", "sampling_params": {"regex": "[0-9]{3}", "max_new_tokens": 60}}
        )
    ).json()
    assert regex["text"].split("</think>")[-1].strip().isdigit()


async def test_chat_and_completions_select_adapters_by_model(http: httpx.AsyncClient) -> None:
    ok = await http.post(
        "/v1/chat/completions",
        json={"model": f"{MODEL}:first", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert ok.status_code == 200
    bad = await http.post(
        "/v1/chat/completions",
        json={"model": "base:missing", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert bad.status_code == 400
    assert bad.json()["message"].startswith("Got LoRA adapter that has never been loaded: missing")
    completion = await http.post("/v1/completions", json={"model": "base:missing", "prompt": "hi"})
    assert completion.status_code == 400


async def test_memory_calls_that_crash_sglangs_scheduler(standins: StandinFactory) -> None:
    server = standins.launch("--skip-server-warmup", "--standin-token-delay", "0.05")
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=30) as client:
        assert (await client.post("/release_memory_occupation", json={})).status_code == 200  # all tags
        assert (
            await client.post("/resume_memory_occupation", json={"tags": ["kv_cache", "weights"]})
        ).status_code == 200
        # generation is not blocked while (only) cuda_graph is released: SGLang without a memory saver
        reply = await client.post("/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 2}})
        assert reply.status_code == 200
        # resuming a tag that is not released is a KeyError in SGLang's scheduler: the server dies
        with pytest.raises(httpx.HTTPError):
            await client.post("/resume_memory_occupation", json={"tags": ["kv_cache"]})
    code = await asyncio.to_thread(server.proc.wait, 15)
    assert code != 0
    assert "Scheduler hit an exception: KeyError: 'kv_cache'" in server.stderr()


async def test_abort_right_after_a_disconnect_is_the_one_that_counts(
    server: Standin, admin: httpx.AsyncClient
) -> None:
    # SGLang aborts a disconnected request only ~2 s later: a client's prompt abort wins.
    rid = await _stream_and_leave(server)
    await asyncio.sleep(0.2)
    assert (await admin.post("/abort_request", json={"rid": rid})).status_code == 200
    await asyncio.sleep(2.5)
    reasons = [e["reason"] for e in _events(server, "abort") if e["rid"] == rid]
    assert reasons == ["abort_request"]


async def test_batch_stream_interleaves_with_index(http: httpx.AsyncClient) -> None:
    body = {"text": ["a", "b c"], "stream": True, "sampling_params": {"max_new_tokens": 3, "n": 2}}
    async with http.stream("POST", "/generate", json=body) as reply:
        events = await _sse(reply)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["index"] for c in chunks} == {0, 1, 2, 3}
    assert [c["index"] for c in chunks[:4]] == [0, 1, 2, 3]  # one token each, in turn
    finals = [c for c in chunks if c["meta_info"]["finish_reason"] is not None]
    assert sorted(c["index"] for c in finals) == [0, 1, 2, 3]
    assert all(len(c["output_ids"]) == 3 for c in finals)
    single = {"text": "a", "stream": True, "sampling_params": {"max_new_tokens": 2}}
    async with http.stream("POST", "/generate", json=single) as reply:
        assert all("index" not in c for c in (await _sse(reply))[:-1])
