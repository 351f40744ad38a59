"""The real sglang-router accepts two stand-ins as workers and balances between them."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections import Counter

import openai
import psutil
import pytest

from sglang_backend._http import httpx
from tests.standin.conftest import StandinFactory, free_port

pytest.importorskip("sglang_router")


async def _wait_router(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"router exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                reply = await http.post(
                    url + "/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "probe"}], "max_tokens": 1},
                )
                if reply.status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError("router did not become ready")


@pytest.mark.router
async def test_round_robin_over_two_standins(standins: StandinFactory, tmp_path: object) -> None:
    workers = [standins.launch(api_key=None) for _ in range(2)]
    port = free_port()
    router = subprocess.Popen(
        [
            sys.executable, "-m", "sglang_router.launch_router",
            "--worker-urls", *[w.base_url for w in workers],
            "--policy", "round_robin",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--log-level", "warn",
            # Its default is 0.0.0.0:29000: every interface, and one router per host.
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_router(url, router)
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
            for index in range(6):
                reply = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"request {index}"}]
                )
                assert (reply.choices[0].message.content or "").startswith(f"You said: request {index}.")
            stream = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "streamed"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text.startswith("You said: streamed.")
        counts = Counter(event["pid"] for w in workers for event in w.events() if event["event"] == "request")
        assert set(counts) == {w.proc.pid for w in workers}
        assert all(count >= 2 for count in counts.values())
    finally:
        tree = []
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = psutil.Process(router.pid).children(recursive=True)
        router.kill()
        router.wait(10)
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(tree, timeout=5)
