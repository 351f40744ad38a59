"""One request path: the public lease, leased SDK clients, one error translation, no key shown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import openai
import pytest

from sglang_backend import (
    AsyncSGLangModel,
    AuthenticationError,
    RequestTimeoutError,
    ServerConfig,
    ServerCrashedError,
    ServerState,
    SGLangModel,
)

from ._shapes import HELLO
from .conftest import MODEL, read_events

Standin = Callable[..., ServerConfig]


@pytest.fixture
async def model(standin: Standin) -> AsyncIterator[AsyncSGLangModel]:
    async with AsyncSGLangModel(MODEL, server=standin()) as m:
        yield m


# -- the lease ----------------------------------------------------------------------------
async def test_lease_admits_counts_in_flight_and_releases(model: AsyncSGLangModel) -> None:
    server = model.server
    assert server is not None
    async with model.lease() as lease:
        assert lease.base_url == model.base_url
        assert lease.api_key == model.api_key
        assert server.inflight == 1
        response = await lease.http.get(f"{lease.base_url}/v1/models", headers=lease.headers)
        assert response.status_code == 200
    assert server.inflight == 0
    assert lease.released


async def test_lease_relaunches_an_idle_stopped_server(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, server=standin(inactivity_timeout=0.5)) as model:
        await model.start()
        first = model.pid
        for _ in range(100):
            if model.state is ServerState.STOPPED:
                break
            await asyncio.sleep(0.05)
        assert model.state is ServerState.STOPPED
        async with model.lease() as lease:
            assert model.state is ServerState.READY
            assert model.pid != first
            response = await lease.http.get(f"{lease.base_url}/health")
            assert response.status_code == 200


async def test_a_lease_keeps_the_watchdog_off(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, server=standin(inactivity_timeout=0.4)) as model:
        async with model.lease():
            await asyncio.sleep(1.2)
            assert model.state is ServerState.READY
        for _ in range(100):
            if model.state is ServerState.STOPPED:
                break
            await asyncio.sleep(0.05)
        assert model.state is ServerState.STOPPED


async def test_lease_translates_errors_raised_in_the_block(model: AsyncSGLangModel) -> None:
    async def unauthenticated_tokenize() -> None:
        async with model.lease() as lease:
            response = await lease.http.post(f"{lease.base_url}/tokenize", json={"prompt": "x"})
            response.raise_for_status()  # no key sent: 401, translated on the way out

    with pytest.raises(AuthenticationError, match="Unauthorized"):
        await unauthenticated_tokenize()


def test_sync_lease_admits_and_releases(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin()) as model:
        server = model.server
        assert server is not None
        with model.lease() as lease:
            assert lease.base_url == model.base_url
            assert server.inflight == 1
        assert server.inflight == 0


# -- one error translation ----------------------------------------------------------------
async def test_wrong_key_is_the_same_type_with_the_servers_message_on_every_path(
    model: AsyncSGLangModel,
) -> None:
    assert model.base_url is not None
    wrong = AsyncSGLangModel(MODEL, url=model.base_url, api_key="wrong-key")
    try:
        with pytest.raises(AuthenticationError, match="Unauthorized") as started:
            await wrong.start()  # connect mode checks the key up front ...
        with pytest.raises(AuthenticationError, match="Unauthorized") as plain:
            await wrong.run(HELLO)  # ... and every path says the same afterwards
        with pytest.raises(AuthenticationError, match="Unauthorized") as streamed:
            await wrong.run(HELLO, stream=True)
        with pytest.raises(AuthenticationError, match="Unauthorized") as counted:
            await wrong.token_counter.count_text("hello")
    finally:
        await wrong.aclose()
    codes = {e.value.status_code for e in (started, plain, streamed, counted)}
    assert codes == {401}


async def test_a_crash_during_token_counting_is_server_crashed(model: AsyncSGLangModel) -> None:
    pid = model.pid
    assert pid is not None
    os.killpg(pid, signal.SIGSTOP)  # the request is sent and waits ...
    counting = asyncio.ensure_future(model.token_counter.count_text("hello world"))
    await asyncio.sleep(0.3)
    os.killpg(pid, signal.SIGKILL)  # ... and the server dies under it
    with pytest.raises(ServerCrashedError):
        await counting
    assert await model.token_counter.count_text("hello world") > 0  # relaunched


async def test_a_streams_read_timeout_is_a_request_timeout(standin: Standin) -> None:
    config = standin(token_delay=1.0)
    async with AsyncSGLangModel(MODEL, timeout=0.4, server=config) as model:
        stream = await model.run(HELLO, stream=True)
        with pytest.raises(RequestTimeoutError):
            async for _ in stream:
                pass
        assert stream.closed


# -- leased SDK clients ---------------------------------------------------------------------
async def test_openai_client_completes_and_relaunches_after_an_idle_stop(
    standin: Standin, events_file: Path
) -> None:
    async with AsyncSGLangModel(MODEL, server=standin(inactivity_timeout=0.5)) as model:
        client = model.openai_client()  # built once, used across runs
        first = await client.completions.create(model=model.request_model, prompt="Hi",
                                                max_tokens=4)
        assert first.choices[0].text
        launches = model.server.launches if model.server else 0
        for _ in range(100):
            if model.state is ServerState.STOPPED:
                break
            await asyncio.sleep(0.05)
        assert model.state is ServerState.STOPPED
        again = await client.completions.create(model=model.request_model, prompt="Hi",
                                                max_tokens=4)
        assert again.choices[0].text == first.choices[0].text
        assert model.server is not None
        assert model.server.launches == launches + 1
        listed = await client.models.list()
        assert [card.id for card in listed.data] == [model.request_model]
        await client.close()
    kinds = [event["event"] for event in read_events(events_file)]
    assert kinds.count("ready") == 2


async def test_openai_client_before_start_starts_the_server(standin: Standin) -> None:
    model = AsyncSGLangModel(MODEL, server=standin())
    try:
        client = model.openai_client()
        assert model.state is ServerState.CREATED
        reply = await client.chat.completions.create(model=model.request_model, messages=HELLO)
        assert reply.choices[0].message.content
        assert model.state is ServerState.READY
    finally:
        await model.aclose()


async def test_an_open_stream_of_the_openai_client_keeps_the_server_up(standin: Standin) -> None:
    config = standin(inactivity_timeout=0.4, token_delay=0.05)
    async with AsyncSGLangModel(MODEL, server=config) as model:
        client = model.openai_client()
        stream = await client.chat.completions.create(
            model=model.request_model, messages=HELLO, stream=True, max_tokens=30
        )
        assert model.server is not None
        assert model.server.inflight == 1
        chunks = [chunk async for chunk in stream]  # ~1.5 s, longer than the idle timeout
        assert len(chunks) > 10
        assert model.state is ServerState.READY
        assert model.server.inflight == 0
        await client.close()


async def test_openai_client_errors_stay_the_sdks_own(model: AsyncSGLangModel) -> None:
    client = model.openai_client()
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=model.request_model, messages=[])
    await client.close()


def test_sync_openai_client_works_and_counts_in_flight(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin(inactivity_timeout=0.5)) as model:
        client = model.openai_client()
        reply = client.chat.completions.create(model=model.request_model, messages=HELLO)
        assert reply.choices[0].message.content
        model.stop()
        again = client.chat.completions.create(model=model.request_model, messages=HELLO)
        assert again.choices[0].message.content == reply.choices[0].message.content
        client.close()


async def test_embeddings_through_the_openai_client(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, server=standin(extra_args=["--is-embedding"])) as model:
        client = model.openai_client()
        result = await client.embeddings.create(model=model.request_model,
                                                input=["hello", "world"])
        assert [item.index for item in result.data] == [0, 1]
        assert len(result.data[0].embedding) > 0
        assert result.data[0].embedding != result.data[1].embedding
        await client.close()


# -- no secret in sight ---------------------------------------------------------------------
def _argv_of_every_process() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout


async def test_ps_shows_no_key_while_a_launched_server_serves(model: AsyncSGLangModel) -> None:
    key = model.api_key
    assert key
    assert (await model.run(HELLO)).choices  # the key works ...
    assert key not in _argv_of_every_process()  # ... and no process's argv shows it
    server = model.server
    assert server is not None
    assert server.process is not None
    assert "--config" in server.process.command


async def test_the_key_file_is_private_and_removed_when_the_server_stops(
    model: AsyncSGLangModel,
) -> None:
    server = model.server
    assert server is not None
    assert server.process is not None
    path = Path(server.process.command[server.process.command.index("--config") + 1])
    assert (await asyncio.to_thread(path.stat)).st_mode & 0o777 == 0o600
    assert (await asyncio.to_thread(path.parent.stat)).st_mode & 0o777 == 0o700
    await model.stop()
    assert not await asyncio.to_thread(path.parent.exists)  # the file with its directory


async def test_no_repr_or_str_shows_the_key(standin: Standin) -> None:
    events: list[object] = []
    async with AsyncSGLangModel(MODEL, server=standin(), on_event=events.append) as model:
        key = model.api_key
        assert key
        stream = await model.run(HELLO, stream=True)
        async with model.lease() as lease:
            shown = [model, model.server, model.server.process if model.server else None,
                     model.server.config if model.server else None, stream, lease,
                     *events, model.openai_client(), model.token_counter]
            for obj in shown:
                assert key not in repr(obj), type(obj).__name__
                assert key not in str(obj), type(obj).__name__
        await stream.aclose()


def test_a_connection_closed_before_any_answer_may_be_sent_again_if_the_server_lives() -> None:
    from sglang_backend._http import httpx
    from sglang_backend._translate import classify

    race = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    assert classify(race, timeout=1).retry_if_alive
    cut = httpx.RemoteProtocolError("peer closed connection without sending complete message body")
    assert not classify(cut, timeout=1).retry_if_alive  # an answer had begun: never resent
