"""Scale-out: N stand-in workers behind the real sglang-router, one lifecycle."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from sglang_backend import AsyncSGLangModel, ServerConfig, ServerEvent, ServerState
from sglang_backend.errors import ConfigError
from sglang_backend.router import RouterGroup

from .conftest import MODEL, read_events

pytest.importorskip("sglang_router", reason="needs the [router] extra (sglang-router)")
pytestmark = pytest.mark.router

Standin = Callable[..., ServerConfig]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_worker_command_lines_split_gpus() -> None:
    config = ServerConfig(replicas=3, tp_size=2, router_policy="round_robin")
    args = [config.server_args("m", port=1000 + i, api_key="k",
                               base_gpu_id=i * 2 if i else None) for i in range(3)]
    assert "--base-gpu-id" not in args[0]
    assert args[1][args[1].index("--base-gpu-id") + 1] == "2"
    assert args[2][args[2].index("--base-gpu-id") + 1] == "4"
    assert all(a[a.index("--tp-size") + 1] == "2" for a in args)


async def test_two_workers_behind_the_real_router(standin: Standin, events_file: Path) -> None:
    events: list[ServerEvent] = []
    config = standin(replicas=2, router_policy="round_robin")
    async with AsyncSGLangModel(MODEL, server=config, on_event=events.append) as model:
        assert model.state is ServerState.READY
        group = model.server.process if model.server else None
        assert isinstance(group, RouterGroup)
        assert len(group.pids) == 3
        router_pid = model.pid
        assert router_pid == group.router.pid if group.router else False
        replies = await asyncio.gather(*(
            model.run([{"role": "user", "content": f"request {i}"}]) for i in range(8)))
        assert all((r.choices[0].message.content or "").startswith(f"You said: request {i}.")
                   for i, r in enumerate(replies))
        stream = await model.run([{"role": "user", "content": "streamed"}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text.startswith("You said: streamed.")
        served = Counter(e["pid"] for e in read_events(events_file) if e["event"] == "request")
        worker_pids = {w.process.pid for w in group.local_workers if w.process}
        assert set(served) == worker_pids
        assert all(n >= 2 for n in served.values())
        everything = list(group.pids)
    for pid in everything:
        assert not _alive(pid)
    assert "ready" in [e.kind for e in events]


async def test_dead_worker_is_relaunched_and_reregistered(standin: Standin) -> None:
    events: list[ServerEvent] = []
    config = standin(replicas=2, router_policy="round_robin")
    async with AsyncSGLangModel(MODEL, server=config, on_event=events.append) as model:
        assert model.server is not None
        group = model.server.process
        assert isinstance(group, RouterGroup)
        victim = group.local_workers[0]
        assert victim.process is not None
        old_pid = victim.process.pid
        os.killpg(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "worker_relaunched" not in [e.kind for e in events] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        kinds = [e.kind for e in events]
        assert "worker_crashed" in kinds
        assert "worker_relaunched" in kinds
        assert victim.process.pid != old_pid
        assert model.state is ServerState.READY  # the group never went down
        assert (await group.registered_workers()).get(victim.url) is not None
        replies = await asyncio.gather(*(
            model.run([{"role": "user", "content": f"after {i}"}]) for i in range(4)))
        assert all(r.choices[0].message.content for r in replies)


async def test_group_idle_stop_and_relaunch(standin: Standin) -> None:
    config = standin(replicas=2, inactivity_timeout=0.5)
    async with AsyncSGLangModel(MODEL, server=config) as model:
        assert model.server is not None
        group = model.server.process
        assert isinstance(group, RouterGroup)
        first = list(group.pids)
        deadline = time.monotonic() + 20
        while model.state is not ServerState.STOPPED and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert model.state is ServerState.STOPPED
        assert not any(_alive(p) for p in first)
        reply = await model.run([{"role": "user", "content": "wake up"}])
        assert reply.choices[0].message.content
        assert model.server.launches == 2


def test_group_shapes_validated() -> None:
    remote = ServerConfig(replicas=0, worker_urls=["http://10.0.0.5:30000/"])
    assert remote.worker_urls == ("http://10.0.0.5:30000",)
    assert remote.is_group
    assert remote.local_replicas == 0
    assert ServerConfig(worker_urls=["https://gpu-box:443"]).is_group  # 1 local + 1 remote
    assert not ServerConfig().is_group
    for bad in ({"replicas": 0},
                {"worker_urls": ["10.0.0.5:30000"]},
                {"worker_urls": ["http://10.0.0.5"]},
                {"worker_urls": ["http://user:pw@10.0.0.5:1"]},
                {"worker_urls": ["http://a:1", "http://a:1/"]},
                {"router": "nginx"},
                {"replicas": 1, "router_policy": "round_robin"}):  # fmt: skip
        with pytest.raises(ConfigError):
            ServerConfig(**bad)
