"""Failures that explain themselves: crash-loop backoff, one error object per waiter, hung
servers, connect mode against a dead URL or with a wrong key."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable

import pytest

from sglang_backend import (
    AsyncSGLangModel,
    AuthenticationError,
    ServerConfig,
    ServerCrashedError,
    ServerHungError,
    ServerStartError,
    ServerState,
    ServerUnavailableError,
)
from sglang_backend.server import ServerEvent

from .._shapes import HELLO
from ..conftest import MODEL

Standin = Callable[..., ServerConfig]


async def test_a_crash_loop_backs_off_instead_of_launching_for_every_request(
    standin: Standin,
) -> None:
    events: list[ServerEvent] = []
    config = standin(fail_at_load="CUDA error: no kernel image", restart_backoff=30)
    model = AsyncSGLangModel(MODEL, server=config, on_event=events.append)
    try:
        for _ in range(20):
            with pytest.raises(ServerStartError):
                await model.run(HELLO)
        assert model.server is not None
        assert model.server.launches <= 3  # not 20
        backoffs = [e for e in events if e.kind == "start_backoff"]
        assert backoffs
        assert backoffs[0].detail["retry_in"] == 30
        launches = model.server.launches
        with pytest.raises(ServerStartError):
            await model.start()  # an explicit start tries at once
        assert model.server.launches == launches + 1
    finally:
        await model.aclose()


async def test_each_waiter_of_a_failed_start_gets_its_own_exception(standin: Standin) -> None:
    model = AsyncSGLangModel(MODEL, server=standin(fail_at_load="boom"))
    try:
        results = await asyncio.gather(*(model.run(HELLO) for _ in range(5)),
                                       return_exceptions=True)
    finally:
        await model.aclose()
    assert all(isinstance(r, ServerStartError) for r in results)
    assert len({id(r) for r in results}) == 5
    causes = {id(r.__cause__) for r in results if isinstance(r, BaseException)}
    assert len(causes) == 1  # all chained to the start's own error
    assert len({str(r) for r in results}) == 1


async def test_a_stopped_server_is_declared_hung_killed_and_replaced(standin: Standin) -> None:
    events: list[ServerEvent] = []
    config = standin(health_check_timeout=1.0)
    async with AsyncSGLangModel(MODEL, timeout=1.0, server=config, on_event=events.append) as model:
        pid = model.pid
        assert pid is not None
        os.killpg(pid, signal.SIGSTOP)  # a wedged server: connections open, nothing answers
        with pytest.raises(ServerHungError) as caught:
            await model.run(HELLO)
        assert isinstance(caught.value, ServerCrashedError)
        assert [e.kind for e in events].count("hung") == 1
        assert model.state is ServerState.FAILED
        reply = await model.run(HELLO)  # relaunched
        assert reply.choices[0].message.content
        assert model.pid != pid


async def test_a_slow_server_that_answers_health_is_only_a_timeout(standin: Standin) -> None:
    from sglang_backend import RequestTimeoutError

    config = standin(token_delay=0.5)
    async with AsyncSGLangModel(MODEL, timeout=0.6, server=config) as model:
        with pytest.raises(RequestTimeoutError) as caught:
            await model.run(HELLO)
        assert not isinstance(caught.value, ServerHungError)
        assert model.state is ServerState.READY


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed on return: nothing listens there


async def test_connect_mode_to_a_dead_url_fails_within_the_connect_timeout() -> None:
    url = f"http://127.0.0.1:{_dead_port()}"
    model = AsyncSGLangModel(MODEL, url=url, timeout=120, connect_timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="connect timeout 1 s"):
            await model.run(HELLO)
        assert time.monotonic() - started < 60  # far below the 120 s request timeout
        with pytest.raises(ServerUnavailableError, match="connect timeout"):
            await model.start()
    finally:
        await model.aclose()


async def test_connect_mode_start_rejects_a_wrong_key(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, server=standin()) as launched:
        assert launched.base_url is not None
        wrong = AsyncSGLangModel(MODEL, url=launched.base_url, api_key="not-the-key")
        try:
            with pytest.raises(AuthenticationError, match="Unauthorized"):
                await wrong.start()
        finally:
            await wrong.aclose()
        right = AsyncSGLangModel(MODEL, url=launched.base_url, api_key=launched.api_key)
        async with right:
            assert right.state is ServerState.READY
