"""The pool's OpenAI-compatible front, driven by the plain openai SDK against stand-ins; and
``sglang-backend serve --pool FILE`` as a real process stopped with Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import openai
import psutil
import pytest

from sglang_backend import ConfigError, ModelPool, ServerConfig, ServerEvent
from sglang_backend._http import httpx
from sglang_backend._pool_file import load_pool_file
from sglang_backend.front import PoolFront
from sglang_backend.testing import standin_command

from .conftest import MODEL, read_events

MESSAGES = [{"role": "user", "content": "Tell me a story about GPUs"}]
Standin = Callable[..., ServerConfig]


@pytest.fixture
async def front(standin: Standin) -> AsyncIterator[PoolFront]:
    events: list[ServerEvent] = []
    pool = ModelPool(max_loaded=2, on_event=events.append)
    pool.add("a", MODEL, server=standin(served_model_name="a-served", token_delay=0.05),
             aliases=("alpha",))
    pool.add("b", MODEL, server=standin(served_model_name="b"))
    pool.add("emb", MODEL, server=standin("--is-embedding", served_model_name="emb"))
    async with PoolFront(pool) as running:
        running.events = events  # type: ignore[attr-defined]
        yield running
    assert pool.loaded() == []


def _client(front: PoolFront, api_key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=front.url + "/v1", api_key=api_key or front.api_key,
                              max_retries=0)


async def test_two_models_by_name_stream_models_and_unknown(front: PoolFront) -> None:
    assert front.url.startswith("http://127.0.0.1:")
    client = _client(front)
    listed = await client.models.list()
    assert [m.id for m in listed.data] == ["a", "b", "emb"]
    assert [m.model_extra["loaded"] for m in listed.data] == [False, False, False]  # type: ignore[index]

    reply_a = await client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=8)
    reply_b = await client.chat.completions.create(model="b", messages=MESSAGES, max_tokens=8)
    assert reply_a.model == "a-served"  # routed to a's server under its served name
    assert reply_b.model == "b"
    assert reply_a.choices[0].message.content
    via_alias = await client.completions.create(model="alpha", prompt="Hi", max_tokens=4)
    assert via_alias.model == "a-served"

    listed = await client.models.list()
    loaded = {m.id: m.model_extra["loaded"] for m in listed.data}  # type: ignore[index]
    assert loaded == {"a": True, "b": True, "emb": False}

    # A stream is relayed as it is produced: chunks arrive spread over the generation.
    arrivals: list[float] = []
    text = []
    stream = await client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=16,
                                                  stream=True)
    async for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    assert len(text) >= 8
    assert arrivals[-1] - arrivals[0] >= 0.3  # 16 tokens 0.05 s apart: not buffered

    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"
    assert body["known"] == ["a", "b", "emb"]
    assert "known models: a, b, emb" in body["message"]

    bad = _client(front, api_key="wrong")
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await bad.close()
    await client.close()


async def test_embeddings_generate_and_swap(front: PoolFront) -> None:
    client = _client(front)
    await client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=4)
    await client.chat.completions.create(model="b", messages=MESSAGES, max_tokens=4)
    vectors = await client.embeddings.create(model="emb", input=["one", "two"])
    assert len(vectors.data) == 2
    assert vectors.data[0].embedding
    assert sorted(front.pool.loaded()) == ["b", "emb"]  # a was the least recently used
    kinds = [(e.kind, e.detail["model"]) for e in front.events]  # type: ignore[attr-defined]
    assert ("evicted", "a") in kinds
    async with httpx.AsyncClient(base_url=front.url,
                                 headers={"Authorization": f"Bearer {front.api_key}"}) as http:
        answer = await http.post("/generate", json={
            "model": "b", "text": "Hello", "sampling_params": {"max_new_tokens": 4}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"]
        missing = await http.post("/v1/chat/completions", json={"messages": MESSAGES})
        assert missing.status_code == 400
        assert missing.json()["error"]["known"] == ["a", "b", "emb"]
        assert (await http.get("/health")).status_code == 200
    await client.close()


def _pool_file(tmp_path: Path, events_file: Path) -> Path:
    command = json.dumps(standin_command())
    flags = json.dumps(["--standin-events-file", str(events_file)])
    text = f"""
[pool]
max_loaded = 1

[models.small]
model_path = "{MODEL}"
aliases = ["router"]

[models.small.server]
launch_command = {command}
extra_args = {flags}
served_model_name = "small"
startup_timeout = 60
shutdown_timeout = 5

[models.large]
model_path = "{MODEL}"

[models.large.server]
launch_command = {command}
extra_args = {flags}
served_model_name = "large"
startup_timeout = 60
shutdown_timeout = 5
"""
    path = tmp_path / "pool.toml"
    path.write_text(text)
    return path


def _launch_cli(path: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "SGLANG_API_KEY": "front-key-123"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sglang_backend.cli", "serve", "--pool", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"URL:\s+(http://127\.0\.0\.1:\d+)", line)
        if match:
            return proc, match.group(1)
    proc.wait()
    raise AssertionError(f"no URL printed; stderr: {proc.stderr.read() if proc.stderr else ''}")


def test_cli_serve_pool_then_ctrl_c(tmp_path: Path, events_file: Path) -> None:
    path = _pool_file(tmp_path, events_file)
    proc, url = _launch_cli(path)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="front-key-123", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["small", "large"]
        assert client.chat.completions.create(model="router", messages=MESSAGES).model == "small"
        assert client.chat.completions.create(model="large", messages=MESSAGES).model == "large"
        client.close()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "front-key-123" not in err
    assert "loaded small" in err
    assert "evicted small" in err
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert sum(1 for e in events if e["event"] == "ready") == 2
    assert sum(1 for e in events if e["event"] == "exit") == 2  # both servers ended


async def test_client_leaving_mid_stream_frees_the_model(front: PoolFront) -> None:
    async with httpx.AsyncClient(base_url=front.url, timeout=30,
                                 headers={"Authorization": f"Bearer {front.api_key}"}) as http:
        body = {"model": "a", "messages": MESSAGES, "max_tokens": 64, "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for _line in response.aiter_lines():
                break
            server = front.pool.model("a").model.server
            assert server is not None
            assert server.inflight >= 1  # the open relay holds the member
    for _ in range(200):
        if server.inflight == 0:
            break
        await asyncio.sleep(0.05)
    assert server.inflight == 0


async def test_queue_full_is_429_before_any_launch(standin: Standin) -> None:
    pool = ModelPool(max_waiting=0)
    pool.add("a", MODEL, server=standin(served_model_name="a"))
    async with PoolFront(pool) as running:
        client = _client(running)
        with pytest.raises(openai.RateLimitError, match="max_waiting=0"):
            await client.chat.completions.create(model="a", messages=MESSAGES)
        await client.close()
        assert pool.model("a").model.server is None or pool.model("a").model.pid is None


@pytest.mark.parametrize(("text", "error"), [
    ('[pool]\nmax_loded = 2\n[models.a]\nmodel_path = "m"\n', r"unknown key\(s\) in \[pool\]: max_loded"),
    ('[models.a]\nmodel_path = "m"\ncolour = 1\n', r"\[models.a\]: colour"),
    ('[models.a]\naliases = ["x"]\n', "needs model_path"),
    ('[models.a]\nmodel_path = "m"\n[models.a.server]\ntp_size = 0\n', r"\[models.a.server\]: .*tp_size"),
    ('[pool]\nmax_loaded = 2\n', "no models"),
    ('[models.a]\nmodel_path = "m"\naliases = ["b"]\n[models.b]\nmodel_path = "m"\n', "already used"),
    ("[models\n", "not valid TOML"),
])
def test_pool_file_errors_name_the_place(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_pool_file(path)


def test_pool_file_builds_the_policy(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text('[pool]\nmax_loaded = 3\nserial_starts = "pool"\n[front]\nport = 1234\n'
                    '[models.a]\nmodel_path = "m"\npinned = true\ngroup = "g"\ngpus = [2, 3]\n'
                    'memory = 0.5\n[models.a.server]\nserved_model_name = "served"\n')
    spec = load_pool_file(path)
    assert spec.front == {"port": 1234}
    pool = spec.build()
    assert pool.max_loaded == 3
    assert pool.serial_starts == "pool"
    (member,) = pool.describe()
    assert member["pinned"] is True
    assert member["group"] == "g"
    assert member["gpus"] == [2, 3]
    assert member["memory"] == 0.5
    assert pool.model("a").request_model == "served"


def test_cli_killed_takes_the_pool_servers_with_it(tmp_path: Path, events_file: Path) -> None:
    proc, url = _launch_cli(_pool_file(tmp_path, events_file))
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="front-key-123", max_retries=0)
        client.chat.completions.create(model="small", messages=MESSAGES)
        client.close()
        pids = {e["pid"] for e in read_events(events_file) if e["event"] == "ready"}
        assert len(pids) == 1
        proc.kill()  # SIGKILL: no finally, no atexit in the front
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 20
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(psutil.pid_exists(p) for p in pids)
