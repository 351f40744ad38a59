"""ServerConfig.keep_alive_on_traffic: requests that reach the server without the library keep
it alive; the watchdog reads them from SGLang's /metrics counters (real stand-in, real HTTP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from sglang_backend import AsyncSGLangModel, ServerConfig, ServerEvent, ServerState
from sglang_backend._http import httpx
from sglang_backend.watchdog import read_request_counters

from .conftest import MODEL

Standin = Callable[..., ServerConfig]
IDLE = 2.0  # seconds; the direct traffic below lasts well over twice as long


async def _direct_requests(url: str, api_key: str, *, seconds: float, every: float) -> int:
    """Chat requests straight to the server (not through the library) for ``seconds``;
    how many were answered. Stops early once the server is gone."""
    answered = 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=10.0) as client:
        while time.monotonic() < deadline:
            try:
                response = await client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {api_key}"},
                    json={"model": MODEL, "max_tokens": 2,
                          "messages": [{"role": "user", "content": "from elsewhere"}]},
                )
            except httpx.TransportError:
                return answered  # idle-stopped: nobody listens on the port any more
            assert response.status_code == 200, response.text
            answered += 1
            await asyncio.sleep(every)
    return answered


async def _wait_for_state(model: AsyncSGLangModel, state: ServerState, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while model.state is not state and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return model.state is state


async def test_direct_traffic_keeps_the_server_alive_then_it_idles(standin: Standin) -> None:
    events: list[ServerEvent] = []
    config = standin(inactivity_timeout=IDLE, keep_alive_on_traffic=True)
    model = AsyncSGLangModel(MODEL, server=config, on_event=events.append)
    async with model:
        pid = model.pid
        assert model.base_url
        assert model.api_key
        assert pid
        answered = await _direct_requests(model.base_url, model.api_key,
                                          seconds=IDLE * 2.5, every=0.25)
        assert answered > 5  # every request reached the server, none went through the library
        assert model.state is ServerState.READY
        assert model.pid == pid
        assert "idle_stopped" not in [e.kind for e in events]
        # Quiet from now on: the inactivity timeout applies again.
        assert await _wait_for_state(model, ServerState.STOPPED, IDLE + 10)
        assert "idle_stopped" in [e.kind for e in events]


async def test_a_long_direct_request_keeps_the_server_alive(standin: Standin) -> None:
    # One streamed request of ~3 s under a 1 s timeout: the total does not move while it
    # runs, the running-requests gauge does.
    config = standin(inactivity_timeout=1.0, keep_alive_on_traffic=True, token_delay=0.1)
    events: list[ServerEvent] = []
    model = AsyncSGLangModel(MODEL, server=config, on_event=events.append)
    async with model:
        assert model.base_url
        assert model.api_key
        async with httpx.AsyncClient(base_url=model.base_url, trust_env=False,
                                     timeout=30.0) as client:
            response = await client.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {model.api_key}"},
                json={"model": MODEL, "max_tokens": 30,
                      "messages": [{"role": "user", "content": " ".join(["word"] * 60)}]},
            )
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 30
        assert model.state is ServerState.READY
        assert "idle_stopped" not in [e.kind for e in events]


async def test_without_the_option_direct_traffic_does_not_count(standin: Standin) -> None:
    events: list[ServerEvent] = []
    model = AsyncSGLangModel(MODEL, server=standin(inactivity_timeout=IDLE),
                             on_event=events.append)
    async with model:
        assert model.base_url
        assert model.api_key
        started = time.monotonic()
        await _direct_requests(model.base_url, model.api_key, seconds=IDLE * 2.5 + 5,
                               every=0.25)
        # The library never saw that traffic: the server was stopped under it.
        assert await _wait_for_state(model, ServerState.STOPPED, 10)
        assert "idle_stopped" in [e.kind for e in events]
        assert time.monotonic() - started < IDLE * 2.5 + 5  # it ended the traffic early


def test_the_option_adds_enable_metrics_once() -> None:
    def argv(**options: object) -> list[str]:
        return ServerConfig(**options).server_args(MODEL, port=30000, api_key=None)  # type: ignore[arg-type]

    assert "--enable-metrics" not in argv()
    assert argv(keep_alive_on_traffic=True).count("--enable-metrics") == 1
    assert argv(keep_alive_on_traffic=True, extra_args=("--enable-metrics",)).count(
        "--enable-metrics") == 1
    # A longer flag with the same start is another flag: it does not stand in for it.
    rendered = argv(keep_alive_on_traffic=True,
                    extra_args=("--enable-metrics-for-all-schedulers",))
    assert rendered.count("--enable-metrics") == 1


PAGE = """\
# HELP sglang:num_requests_total Number of requests processed.
# TYPE sglang:num_requests_total counter
sglang:num_requests_total{model_name="a b",engine_type="unified"} 7.0
sglang:num_requests_total{model_name="other"} 3.0
sglang:num_requests_created{model_name="a b"} 1.7e9
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="a b",tp_rank="0"} 2.0
sglang:num_running_reqs_offline_batch{model_name="a b"} 9.0
sglang:num_requests_total_bogus 5
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PAGE, (10.0, 2.0)),
        ("sglang:num_requests_total 4\nsglang:num_running_reqs 0\n", (4.0, 0.0)),
        ("# nothing here\nsglang:prompt_tokens_total 12.0\n", None),
        ("sglang:num_requests_total{a=\"b\"} NaN-ish\n", None),
    ],
)
def test_request_counters_are_summed_over_label_sets(
    text: str, expected: tuple[float, float] | None
) -> None:
    assert read_request_counters(text) == expected
