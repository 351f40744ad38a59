"""SGLang's native surface (issue 18): generate, abort on cancel, LoRA, admin calls, the key."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from sglang_backend import (
    AsyncSGLangModel,
    BadRequestError,
    ConfigError,
    GenerateChunk,
    GenerateResult,
    GenerateStream,
    InvalidRequestError,
    SamplingParams,
    ServerConfig,
    ServerState,
    SGLangModel,
)
from sglang_backend.native import build_generate, new_rid
from sglang_backend.router import RouterGroup

from .conftest import MODEL, read_events

Standin = Callable[..., ServerConfig]


def _by_abort_request(event: dict[str, Any]) -> bool:
    """An ``abort`` line on the stand-in. Its ``reason`` is ``abort_request`` when our abort
    arrived first, ``disconnect`` when the stand-in noticed the closed connection first (as
    SGLang does, later); :func:`_spy_aborts` shows that ours was sent either way."""
    return event["event"] == "abort" and event.get("reason") in ("abort_request", "disconnect")


def _spy_aborts(model: AsyncSGLangModel) -> list[tuple[str, int]]:
    """Record every ``/abort_request`` the model posts, as (rid, number of servers told)."""
    path = model.request_path
    real = path.abort
    sent: list[tuple[str, int]] = []

    async def abort(lease: Any, body: dict[str, Any]) -> None:
        await real(lease, body)  # raises unless every server answered 2xx
        sent.append((body["rid"], len(lease.direct_urls)))

    path.abort = abort  # type: ignore[method-assign]
    return sent


@pytest.fixture
async def model(standin: Standin) -> AsyncIterator[AsyncSGLangModel]:
    async with AsyncSGLangModel(MODEL, server=standin()) as m:
        yield m


async def _wait_for(events_file: Path, predicate: Callable[[dict[str, Any]], bool],
                    timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in read_events(events_file):
            if predicate(event):
                return event
        await asyncio.sleep(0.01)
    raise AssertionError(f"no such event in {read_events(events_file)}")


# -- bad input: typed errors before any I/O ---------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"text": "hi", "sampling_params": {"max_tokens": 3}}, "max_tokens"),
        ({"text": "hi", "input_ids": [1, 2]}, "input_ids"),
        ({"text": []}, "text"),
        ({"input_ids": []}, "input_ids"),
        ({"text": "hi", "sampling_params": {"temperature": -1}}, "temperature"),
        ({"text": "hi", "sampling_params": {"regex": "a", "ebnf": "b"}}, "regex"),
        ({"text": "hi", "top_logprobs_num": 2}, "top_logprobs_num"),
        ({"text": ["a", "b"], "rid": "one"}, "rid"),
        ({"text": "hi", "rid": "has space"}, "rid"),
        ({"input_ids": [1, -2]}, "input_ids"),
    ],
)
async def test_bad_generate_input_is_refused_before_any_io(
    kwargs: dict[str, Any], field: str
) -> None:
    model = AsyncSGLangModel(MODEL, server=ServerConfig(launch_command=("false",)))
    with pytest.raises(InvalidRequestError, match=field):
        await model.generate(**kwargs)
    assert model.state is ServerState.CREATED  # nothing was launched
    await model.aclose()


async def test_adapters_are_checked_before_any_io() -> None:
    off = AsyncSGLangModel(MODEL, server=ServerConfig(launch_command=("false",)))
    with pytest.raises(InvalidRequestError, match="enable_lora"):
        await off.generate("hi", lora_path="sql")
    with pytest.raises(InvalidRequestError, match="enable_lora"):
        await off.load_lora_adapter("sql", "/adapters/sql")
    on = AsyncSGLangModel(MODEL, server=ServerConfig(launch_command=("false",),
                                                     lora_paths={"sql": "/adapters/sql"}))
    assert on.lora_adapters == {"sql": "/adapters/sql"}
    with pytest.raises(InvalidRequestError, match="'chat' is not loaded"):
        await on.generate("hi", lora_path="chat")
    with pytest.raises(InvalidRequestError, match="'chat' is not loaded"):
        await on.unload_lora_adapter("chat")
    with pytest.raises(InvalidRequestError, match="tags"):
        await on.release_memory_occupation(["gpu"])
    assert on.state is off.state is ServerState.CREATED
    await off.aclose()
    await on.aclose()


def test_sampling_params_use_sglang_names_and_forbid_others() -> None:
    params = SamplingParams(max_new_tokens=8, top_k=20, json_schema={"type": "object"})
    assert params.wire() == {"max_new_tokens": 8, "top_k": 20, "json_schema": '{"type": "object"}'}
    with pytest.raises(InvalidRequestError, match="unknown sampling_params key 'max_tokens'"):
        SamplingParams(max_tokens=8)
    request = build_generate(["a", "b", "c"], sampling_params={"n": 2})
    assert request.many
    assert request.batched
    assert len(request.rids) == 3
    assert request.body["rid"] == request.rids
    assert all(len(r) == 32 and int(r, 16) >= 0 for r in request.rids)
    single = build_generate("a", rid="mine")
    assert single.body["rid"] == "mine"
    assert not single.many


def test_server_config_renders_lora_flags_and_keeps_the_admin_key_out_of_argv() -> None:
    config = ServerConfig(
        lora_paths={"sql": "/a/sql", "chat": "/a/chat"}, max_loras_per_batch=4,
        max_lora_rank=16, lora_target_modules=("q_proj", "v_proj"), admin_api_key="adm-secret",
    )
    argv = config.command("m", port=1, api_key="k", config_file="/tmp/x.yaml")
    assert "--enable-lora" in argv
    at = argv.index("--lora-paths")
    assert argv[at + 1:at + 3] == ["sql=/a/sql", "chat=/a/chat"]
    assert argv[argv.index("--max-loras-per-batch") + 1] == "4"
    assert argv[argv.index("--max-lora-rank") + 1] == "16"
    at = argv.index("--lora-target-modules")
    assert argv[at + 1:at + 3] == ["q_proj", "v_proj"]
    assert not any("adm-secret" in arg for arg in argv)
    assert config.secret_args("k") == {"api-key": "k", "admin-api-key": "adm-secret"}
    assert "adm-secret" not in repr(config)
    assert ServerConfig().secret_args("k") == {"api-key": "k"}


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"extra_args": ("--lora-paths", "x=/y")}, "lora_paths"),
        ({"extra_args": ("--admin-api-key", "k")}, "admin_api_key"),
        ({"extra_args": ("--enable-lora",)}, "enable_lora"),
        ({"enable_lora": False, "lora_paths": {"a": "/a"}}, "lora_paths"),
        ({"lora_paths": {"a:b": "/a"}}, "adapter name"),
        ({"max_lora_rank": 0}, "max_lora_rank"),
    ],
)
def test_bad_lora_config_names_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ServerConfig(**options)


# -- generate -------------------------------------------------------------------------------
async def test_generate_a_string_a_batch_n_and_input_ids(
    model: AsyncSGLangModel, events_file: Path
) -> None:
    one = await model.generate("Say hello", sampling_params={"max_new_tokens": 8},
                               rid="rid-one")
    assert isinstance(one, GenerateResult)
    assert one.text
    assert one.output_ids
    assert len(one.output_ids) == one.meta_info.completion_tokens
    assert one.meta_info.prompt_tokens > 0
    assert one.meta_info.id == "rid-one"
    assert one.finish_reason in ("stop", "length")
    assert any(e["event"] == "request" and e.get("rid") == "rid-one"
               for e in read_events(events_file))

    batch = await model.generate(["one", "two", "three"], sampling_params={"max_new_tokens": 4})
    assert isinstance(batch, list)
    assert len(batch) == 3
    assert all(isinstance(r, GenerateResult) and r.text for r in batch)
    assert len({r.meta_info.id for r in batch}) == 3

    ids = await model.tokenize("Say hello")
    by_ids = await model.generate(input_ids=ids, sampling_params={"max_new_tokens": 4})
    assert isinstance(by_ids, GenerateResult)
    assert by_ids.meta_info.prompt_tokens == len(ids)


async def test_generate_n_returns_a_list(model: AsyncSGLangModel) -> None:
    two = await model.generate("Pick a word", sampling_params={"n": 2, "max_new_tokens": 4,
                                                               "temperature": 1.0})
    assert isinstance(two, list)
    assert len(two) == 2
    assert all(isinstance(r, GenerateResult) for r in two)


async def test_generate_logprobs_with_top_two(model: AsyncSGLangModel) -> None:
    result = await model.generate("Say hello", sampling_params={"max_new_tokens": 4},
                                  return_logprob=True, top_logprobs_num=2)
    assert isinstance(result, GenerateResult)
    meta = result.meta_info
    assert meta.output_token_logprobs is not None
    assert len(meta.output_token_logprobs) == meta.completion_tokens
    assert meta.output_top_logprobs is not None
    assert len(meta.output_top_logprobs) == meta.completion_tokens
    # SGLang's (logprob, token_id, text) tuples; at most top_logprobs_num per position (the
    # stand-in lists only the tokens its echo vocabulary can pick).
    for (logprob, token, _text), top, chosen in zip(
        meta.output_token_logprobs, meta.output_top_logprobs, result.output_ids or [],
        strict=True,
    ):
        assert token == chosen
        assert logprob <= 0.0
        assert 1 <= len(top) <= 2
        assert all(isinstance(entry[1], int) and entry[0] <= 0.0 for entry in top)


async def test_generate_stream_yields_cumulative_chunks(model: AsyncSGLangModel) -> None:
    stream = await model.generate("Say hello", sampling_params={"max_new_tokens": 8},
                                  stream=True)
    assert isinstance(stream, GenerateStream)
    server = model.server
    assert server is not None
    async with stream:
        assert server.inflight == 1  # in flight until closed
        chunks = [chunk async for chunk in stream]
    assert server.inflight == 0
    assert chunks
    assert all(isinstance(c, GenerateChunk) for c in chunks)
    assert "".join(c.delta for c in chunks) == chunks[-1].text
    assert chunks[-1].finish_reason in ("stop", "length")
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].meta_info.id == stream.rid


async def test_a_streamed_batch_interleaves_its_outputs_by_index(
    model: AsyncSGLangModel
) -> None:
    stream = await model.generate(["one", "two"], stream=True,
                                  sampling_params={"max_new_tokens": 4, "n": 2})
    assert len(stream.rids) == 2
    async with stream:
        chunks = [chunk async for chunk in stream]
    assert {c.index for c in chunks} == {0, 1, 2, 3}
    for index in range(4):
        mine = [c for c in chunks if c.index == index]
        assert "".join(c.delta for c in mine) == mine[-1].text
        assert mine[-1].finish_reason in ("stop", "length")


async def test_a_server_error_is_typed(model: AsyncSGLangModel) -> None:
    # SGLang's own validation, past ours: a prompt longer than the context.
    with pytest.raises(BadRequestError):
        await model.generate("word " * 50_000, sampling_params={"max_new_tokens": 4})


# -- abort on cancel ------------------------------------------------------------------------
async def test_cancelling_generate_aborts_it_on_the_server(
    standin: Standin, events_file: Path
) -> None:
    async with AsyncSGLangModel(MODEL, server=standin(token_delay=0.5)) as model:
        sent = _spy_aborts(model)
        rid = new_rid()
        task = asyncio.ensure_future(
            model.generate("Tell a long story", rid=rid,
                           sampling_params={"max_new_tokens": 200, "ignore_eos": True}))
        await _wait_for(events_file, lambda e: e["event"] == "request" and e.get("rid") == rid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # at once: the abort is not awaited by the cancelled caller
        assert sent == []
        abort = await _wait_for(events_file,
                                lambda e: _by_abort_request(e) and e.get("rid") == rid)
        assert abort["rid"] == rid
        await model.request_path.wait_aborts()
        assert sent == [(rid, 1)]
        assert model.server is not None
        assert model.server.inflight == 0
        # The model keeps working, and the request is gone from the server.
        assert isinstance(await model.generate("hi", sampling_params={"max_new_tokens": 2}),
                          GenerateResult)


async def test_cancelling_behind_a_router_aborts_on_the_worker_that_holds_it(
    standin: Standin, events_file: Path
) -> None:
    config = standin(replicas=2, token_delay=0.5)
    async with AsyncSGLangModel(MODEL, server=config) as model:
        sent = _spy_aborts(model)
        rid = new_rid()
        task = asyncio.ensure_future(
            model.generate("Tell a long story", rid=rid,
                           sampling_params={"max_new_tokens": 200, "ignore_eos": True}))
        request = await _wait_for(events_file,
                                  lambda e: e["event"] == "request" and e.get("rid") == rid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Routers do not forward aborts: the worker holding the request got it directly.
        await _wait_for(events_file, lambda e: _by_abort_request(e) and e.get("rid") == rid
                        and e["pid"] == request["pid"])
        group = model.server.process if model.server else None
        assert isinstance(group, RouterGroup)
        await model.request_path.wait_aborts()
        assert sent == [(rid, 2)]  # every worker was told (the other had nothing to stop)
        # abort(rid) on demand goes to the workers too.
        rid = new_rid()
        task = asyncio.ensure_future(
            model.generate("Tell a long story", rid=rid,
                           sampling_params={"max_new_tokens": 200, "ignore_eos": True}))
        await _wait_for(events_file, lambda e: e["event"] == "request" and e.get("rid") == rid)
        await model.abort(rid)
        result = await task
        assert isinstance(result, GenerateResult)
        assert result.finish_reason == "abort"


async def test_cancelling_chat_aborts_it_by_its_rid(standin: Standin, events_file: Path) -> None:
    async with AsyncSGLangModel(MODEL, server=standin(token_delay=0.5)) as model:
        task = asyncio.ensure_future(model.run(
            [{"role": "user", "content": "Tell a long story"}]))
        request = await _wait_for(events_file,
                                  lambda e: e["event"] == "request" and bool(e.get("rid")))
        rid = request["rid"]
        assert len(rid) == 32
        sent = _spy_aborts(model)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _wait_for(events_file, lambda e: _by_abort_request(e) and e.get("rid") == rid)
        await model.request_path.wait_aborts()
        assert sent == [(rid, 1)]


async def test_closing_a_stream_early_aborts_it(standin: Standin, events_file: Path) -> None:
    async with AsyncSGLangModel(MODEL, server=standin(token_delay=0.5)) as model:
        sent = _spy_aborts(model)
        stream = await model.generate("Tell a long story", stream=True,
                                      sampling_params={"max_new_tokens": 200,
                                                       "ignore_eos": True})
        async with stream:
            await stream.__anext__()
        await _wait_for(events_file,
                        lambda e: _by_abort_request(e) and e.get("rid") == stream.rid)
        chat = await model.run([{"role": "user", "content": "Tell a long story"}], stream=True)
        async with chat:
            await chat.__anext__()
        request = [e for e in read_events(events_file) if e["event"] == "request"][-1]
        await _wait_for(events_file,
                        lambda e: _by_abort_request(e) and e.get("rid") == request["rid"])
        await model.request_path.wait_aborts()
        assert sent == [(stream.rid, 1), (request["rid"], 1)]


async def test_a_finished_request_is_not_aborted(model: AsyncSGLangModel,
                                                 events_file: Path) -> None:
    stream = await model.generate("hi", stream=True, sampling_params={"max_new_tokens": 2})
    async with stream:
        _ = [c async for c in stream]
    await model.run([{"role": "user", "content": "hi"}])
    await model.request_path.wait_aborts()
    assert not [e for e in read_events(events_file) if e["event"] == "abort"]


async def test_abort_and_abort_all(standin: Standin, events_file: Path) -> None:
    async with AsyncSGLangModel(MODEL, server=standin(token_delay=0.05)) as model:
        rid = new_rid()
        task = asyncio.ensure_future(model.generate(
            "Tell a long story", rid=rid,
            sampling_params={"max_new_tokens": 200, "ignore_eos": True}))
        await _wait_for(events_file, lambda e: e["event"] == "request" and e.get("rid") == rid)
        await model.abort(rid)
        result = await task
        assert isinstance(result, GenerateResult)
        assert result.finish_reason == "abort"
        assert result.meta_info.completion_tokens < 200
        task = asyncio.ensure_future(model.generate(
            "Tell a long story", sampling_params={"max_new_tokens": 200, "ignore_eos": True}))
        await _wait_for(events_file, lambda e: e["event"] == "request"
                        and e.get("rid") not in (None, rid))
        await model.abort_all()
        result = await task
        assert isinstance(result, GenerateResult)
        assert result.finish_reason == "abort"


# -- LoRA ---------------------------------------------------------------------------------
async def test_a_runtime_adapter_is_loaded_again_after_a_relaunch(
    standin: Standin, events_file: Path
) -> None:
    async with AsyncSGLangModel(MODEL, server=standin(enable_lora=True)) as model:
        result = await model.load_lora_adapter("sql", "/adapters/sql")
        assert result.success
        assert "sql" in result.adapters
        assert model.lora_adapters == {"sql": "/adapters/sql"}
        first = await model.generate("hi", lora_path="sql", sampling_params={"max_new_tokens": 2})
        assert isinstance(first, GenerateResult)
        await model.stop()
        assert model.state is ServerState.STOPPED
        again = await model.generate("hi", lora_path="sql", rid="after-relaunch",
                                     sampling_params={"max_new_tokens": 2})
        assert isinstance(again, GenerateResult)
        events = read_events(events_file)
        readies = [i for i, e in enumerate(events) if e["event"] == "ready"]
        assert len(readies) == 2
        loads = [i for i, e in enumerate(events)
                 if e["event"] == "load_lora" and e.get("name") == "sql"]
        served = next(i for i, e in enumerate(events)
                      if e["event"] == "request" and e.get("rid") == "after-relaunch")
        assert any(readies[1] < i < served for i in loads)  # loaded again, before the request
        unloaded = await model.unload_lora_adapter("sql")
        assert unloaded.success
        assert model.lora_adapters == {}
        with pytest.raises(InvalidRequestError, match="not loaded"):
            await model.generate("hi", lora_path="sql")


# -- admin calls, memory, info --------------------------------------------------------------
async def test_admin_calls_carry_the_admin_key_which_is_never_shown(
    standin: Standin, events_file: Path
) -> None:
    admin = "admin-" + new_rid()
    async with AsyncSGLangModel(MODEL, server=standin(admin_api_key=admin)) as model:
        assert model.pid is not None
        for pid in [model.pid, *(c.pid for c in psutil.Process(model.pid).children(True))]:
            assert admin not in " ".join(psutil.Process(pid).cmdline())
        assert admin not in repr(model)
        assert admin not in repr(model.server)
        assert "flushed" in (await model.flush_cache()).lower()
        await model.release_memory_occupation()
        await model.resume_memory_occupation(["kv_cache", "weights"])
        kinds = [e["event"] for e in read_events(events_file)]
        assert "flush_cache" in kinds
        assert kinds.index("release_memory") < kinds.index("resume_memory")
        info = await model.server_info()
        assert isinstance(info, dict)
        assert info
        model_info = await model.model_info()
        assert "model_path" in model_info


async def test_pause_continue_and_weights(model: AsyncSGLangModel, events_file: Path) -> None:
    await model.pause_generation()
    await model.continue_generation()
    result = await model.update_weights_from_disk(MODEL)
    assert result.success
    kinds = [e["event"] for e in read_events(events_file)]
    assert "update_weights" in kinds


# -- the blocking facade --------------------------------------------------------------------
def test_the_facade_generates_and_streams(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin()) as model:
        one = model.generate("Say hello", sampling_params={"max_new_tokens": 4})
        assert isinstance(one, GenerateResult)
        assert one.text
        with model.generate("Say hello", stream=True,
                            sampling_params={"max_new_tokens": 4}) as stream:
            chunks = list(stream)
        assert chunks
        assert chunks[-1].finish_reason is not None
        assert model.lora_adapters == {}
        assert isinstance(model.server_info(), dict)


# -- the docs page's examples run as written --------------------------------------------------
DOC = Path(__file__).resolve().parents[1] / "docs" / "native-api.md"
DOC_EXPECTS = [
    ["batch: 3", "n=2: 2", "finish: "],
    ["cancelled", "finish: abort"],
    ["loaded: {'sql': '/adapters/sql'}", "after relaunch: ", " ready"],
    ["flush: Cache flushed.", "model: "],
]


def _doc_blocks() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return [part.split("```", 1)[0] for part in text.split("```python\n")[1:]]


def test_the_docs_page_has_the_examples_checked_here() -> None:
    assert len(_doc_blocks()) == len(DOC_EXPECTS)


@pytest.mark.parametrize("index", range(len(DOC_EXPECTS)))
def test_docs_example_runs_against_the_standin(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(_doc_blocks()[index], encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        check=False, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for expected in DOC_EXPECTS[index]:
        assert expected in result.stdout, result.stdout


async def test_chat_selects_a_launch_adapter_and_refuses_an_unknown_one(
    standin: Standin,
) -> None:
    config = standin(lora_paths={"sql": "/adapters/sql"})
    async with AsyncSGLangModel(MODEL, {"lora_path": "sql"}, server=config) as model:
        reply = await model.run([{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        other = AsyncSGLangModel(MODEL, {"lora_path": "chat"}, server=config)
        with pytest.raises(InvalidRequestError, match="'chat' is not loaded"):
            await other.run([{"role": "user", "content": "hi"}])
        assert other.state is ServerState.CREATED
        await other.aclose()
