"""Loopback is never proxied: the library's own HTTP clients ignore HTTP_PROXY for the server,
and the server's environment gets the loopback names in NO_PROXY (SGLang's warm-up request to
its own port goes through ``requests``, which honours the proxy variables)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Callable

import psutil
import pytest

from sglang_backend import AsyncSGLangModel, ServerConfig
from sglang_backend._http import httpx
from sglang_backend._process import add_loopback_no_proxy

from .conftest import MODEL

HELLO = [{"role": "user", "content": "Hello"}]
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class RecordingProxy:
    """A loopback TCP listener standing in for a proxy: records each request line, answers 502."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        self.requests.append(line)
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RecordingProxy]:
    recorder = RecordingProxy()
    url = await recorder.start()
    for name in PROXY_VARS:
        monkeypatch.setenv(name, url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        yield recorder
    finally:
        await recorder.stop()


async def test_the_proxy_is_live_for_an_ordinary_client(proxy: RecordingProxy) -> None:
    # Shows the environment really routes loopback through the proxy, so the zero below counts.
    async with httpx.AsyncClient(trust_env=True) as client:
        response = await client.get("http://127.0.0.1:9/anything")
    assert response.status_code == 502
    assert len(proxy.requests) == 1


async def test_requests_and_health_polls_bypass_the_proxy(
    proxy: RecordingProxy, standin: Callable[..., ServerConfig]
) -> None:
    async with AsyncSGLangModel(MODEL, server=standin()) as model:
        reply = await model.run(HELLO)
        assert reply.choices[0].message.content
        async with model.openai_client() as client:  # the leased SDK client, too
            models = await client.models.list()
        assert models.data
        pid = model.pid
        assert pid is not None
        env = await asyncio.to_thread(lambda: psutil.Process(pid).environ())
    assert proxy.requests == []
    for name in ("NO_PROXY", "no_proxy"):
        assert {"127.0.0.1", "localhost", "::1"} <= set(env[name].split(","))
    # What requests/urllib in the server would decide with that environment:
    assert urllib.request.proxy_bypass_environment(
        "127.0.0.1", {"no": env["no_proxy"], "http": env["http_proxy"]}
    )


def test_no_proxy_keeps_the_users_entries_and_adds_loopback_once() -> None:
    env = {"NO_PROXY": "corp.example, 10.0.0.0/8", "no_proxy": "localhost"}
    add_loopback_no_proxy(env)
    assert env["NO_PROXY"] == env["no_proxy"] == "corp.example,10.0.0.0/8,localhost,127.0.0.1,::1"
    add_loopback_no_proxy(env)
    assert env["NO_PROXY"] == "corp.example,10.0.0.0/8,localhost,127.0.0.1,::1"
    empty: dict[str, str] = {}
    add_loopback_no_proxy(empty)
    assert empty["no_proxy"] == "127.0.0.1,localhost,::1"


def test_the_blocking_facade_bypasses_the_proxy_too(
    proxy: RecordingProxy, standin: Callable[..., ServerConfig]
) -> None:
    from sglang_backend import SGLangModel

    with SGLangModel(MODEL, server=standin()) as model:
        assert model.run(HELLO).choices[0].message.content
        with model.openai_client() as client:
            assert client.models.list().data
    assert proxy.requests == []


def test_remote_urls_keep_the_environments_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from sglang_backend._http import new_sync_client

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    with new_sync_client() as client:
        remote = client._transport_for_url(httpx.URL("http://example.org/"))
        local = client._transport_for_url(httpx.URL("http://127.0.0.1:30000/health"))
    assert remote is not client._transport  # the proxy's transport
    assert local is client._transport
