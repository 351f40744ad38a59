"""No drift: the same request, lease and error behaviour on the async model and the facade.

One ``SGLangModel`` serves both surfaces: ``async`` drives its ``async_model`` on the facade's
own loop (``call_async``), ``sync`` calls the facade's blocking methods, which send from the
calling thread. Each test runs against both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sglang_backend import (
    AuthenticationError,
    RequestTimeoutError,
    ServerConfig,
    ServerCrashedError,
    SGLangModel,
)

from ._shapes import HELLO
from .conftest import MODEL

Standin = Callable[..., ServerConfig]
SURFACES = ["async", "sync"]


class Surface:
    def __init__(self, kind: str, model: SGLangModel) -> None:
        self.kind = kind
        self.model = model

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "sync":
            return self.model.run(*args, **kwargs)
        return self.model.call_async(self.model.async_model.run, *args, **kwargs)

    def drain(self, messages: Any) -> int:
        if self.kind == "sync":
            return sum(1 for _ in self.model.run(messages, stream=True))  # type: ignore[union-attr]

        async def consume() -> int:
            stream = await self.model.async_model.run(messages, stream=True)
            return len([chunk async for chunk in stream])

        return self.model.call_async(consume)


@pytest.fixture(params=SURFACES)
def surface_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _surface(kind: str, model: SGLangModel) -> Iterator[Surface]:
    try:
        yield Surface(kind, model)
    finally:
        model.close()


def test_both_surfaces_build_the_same_request(standin: Standin) -> None:
    model = SGLangModel(MODEL, {"temperature": 0.1}, server=standin(tool_call_parser="qwen"))
    try:
        a = model.async_model.chat_request(HELLO, {"type": "json_object"})
        s = model.chat_request(HELLO, {"type": "json_object"})
        strip = lambda kw: {k: v for k, v in kw.items() if k != "extra_body"}  # noqa: E731
        assert strip(a.kwargs) == strip(s.kwargs)
        assert a.rid != s.rid  # every request its own id
    finally:
        model.close()


def test_a_wrong_key_is_the_same_error_on_both(standin: Standin, surface_kind: str) -> None:
    with SGLangModel(MODEL, server=standin()) as launched:
        assert launched.base_url is not None
        wrong = SGLangModel(MODEL, url=launched.base_url, api_key="wrong")
        for surface in _surface(surface_kind, wrong):
            with pytest.raises(AuthenticationError, match="Unauthorized") as caught:
                surface.run(HELLO)
            assert caught.value.status_code == 401


def test_a_crash_mid_request_is_server_crashed_then_relaunched(
    standin: Standin, surface_kind: str
) -> None:
    model = SGLangModel(MODEL, server=standin(crash_after=1))
    for surface in _surface(surface_kind, model):
        model.start()
        assert surface.run(HELLO).choices
        with pytest.raises(ServerCrashedError):
            surface.run(HELLO)
        assert surface.run(HELLO).choices  # relaunched (the counter starts again)
        assert model.server is not None
        assert model.server.launches == 2


def test_a_streams_read_timeout_is_a_timeout_on_both(standin: Standin, surface_kind: str) -> None:
    model = SGLangModel(MODEL, timeout=0.4, server=standin(token_delay=1.0))
    for surface in _surface(surface_kind, model):
        with pytest.raises(RequestTimeoutError):
            surface.drain(HELLO)
        assert model.server is not None
        assert model.server.inflight == 0


def test_a_request_counts_in_flight_on_both(standin: Standin, surface_kind: str) -> None:
    model = SGLangModel(MODEL, {"max_tokens": 10}, server=standin(token_delay=0.1))
    for surface in _surface(surface_kind, model):
        model.start()
        server = model.server
        assert server is not None
        seen: list[int] = []
        worker = threading.Thread(target=surface.run, args=(HELLO,))
        worker.start()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            if server.inflight:
                seen.append(server.inflight)
            time.sleep(0.005)
        worker.join()
        assert seen == [1]
        assert server.inflight == 0
