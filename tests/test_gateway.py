"""The maintained gateway (smg) in front of stand-in workers, local and elsewhere.

Real smg processes, real stand-in workers, real HTTP; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from sglang_backend import AsyncSGLangModel, ServerConfig, ServerEvent
from sglang_backend._http import httpx
from sglang_backend._router_launch import KEY_ENV
from sglang_backend._topology import DecodeWorker, PDTopology, PrefillWorker
from sglang_backend.router import RouterGroup, resolve_router

from ._net import wait_healthy
from .conftest import MODEL, read_events
from .standin.conftest import StandinFactory

smg_launch = pytest.importorskip("smg.launch_router", reason="needs smg ([router] extra)")
pytestmark = pytest.mark.router

Standin = Callable[..., ServerConfig]


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[StandinFactory]:
    """Stand-ins the library does not launch: 'workers elsewhere' (killed at teardown)."""
    factory = StandinFactory(tmp_path / "remote")
    (tmp_path / "remote").mkdir()
    yield factory
    factory.close()


def _group(model: AsyncSGLangModel) -> RouterGroup:
    assert model.server is not None
    group = model.server.process
    assert isinstance(group, RouterGroup)
    return group


async def _wait(predicate: Callable[[], bool], timeout: float = 15.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_router_flags_judged_by_the_routers_own_parsers() -> None:
    config = ServerConfig(replicas=2, router_policy="round_robin", router="smg")
    group = RouterGroup(MODEL, config, api_key="k", client=httpx.AsyncClient(), router_port=8000,
                        router_url="http://127.0.0.1:8000", worker_ports=[8001, 8002],
                        worker_urls=["http://127.0.0.1:8001", "http://127.0.0.1:8002"],
                        emit=lambda *a, **k: None)
    parsed = smg_launch.parse_router_args(group.router_args(metrics_port=8009))
    assert parsed.worker_urls == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    assert (parsed.host, parsed.port) == ("127.0.0.1", 8000)
    assert (parsed.prometheus_host, parsed.prometheus_port) == ("127.0.0.1", 8009)
    assert parsed.health_check_interval_secs == 1
    assert parsed.health_failure_threshold == 2
    assert parsed.remove_unhealthy_workers is False
    assert parsed.policy == "round_robin"
    assert parsed.shutdown_grace_period_secs == 9  # inside shutdown_timeout (10 s)
    command, env = group.router_command(8009)
    assert env == {KEY_ENV: "k"}
    assert "--api-key" not in " ".join(command)

    pd = PDTopology(prefill=[PrefillWorker(url="http://10.0.0.1:30000", bootstrap_port=8998),
                             PrefillWorker(url="http://10.0.0.2:30000")],
                    decode=[DecodeWorker(url="http://10.0.0.3:30001")], transfer_backend="nixl")
    pd_config = ServerConfig(pd=pd, router="smg")
    assert pd_config.local_replicas == 0
    assert pd_config.is_group
    pd_group = RouterGroup(MODEL, pd_config, api_key="k", client=httpx.AsyncClient(),
                           router_port=8000, router_url="http://127.0.0.1:8000", worker_ports=[],
                           worker_urls=[], emit=lambda *a, **k: None)
    parsed = smg_launch.parse_router_args(pd_group.router_args(metrics_port=8009))
    assert parsed.pd_disaggregation is True
    assert parsed.prefill_urls == [("http://10.0.0.1:30000", 8998), ("http://10.0.0.2:30000", None)]
    assert parsed.decode_urls == ["http://10.0.0.3:30001"]
    assert pd.sglang_args("prefill", 0) == [
        "--disaggregation-mode", "prefill", "--disaggregation-transfer-backend", "nixl",
        "--disaggregation-bootstrap-port", "8998"]  # fmt: skip

    sglang_router = pytest.importorskip("sglang_router.launch_router")
    old = ServerConfig(replicas=2, router="sglang-router")
    old_group = RouterGroup(MODEL, old, api_key="k", client=httpx.AsyncClient(), router_port=8000,
                            router_url="http://127.0.0.1:8000", worker_ports=[8001, 8002],
                            worker_urls=["http://127.0.0.1:8001", "http://127.0.0.1:8002"],
                            emit=lambda *a, **k: None)
    parsed = sglang_router.parse_router_args(old_group.router_args(metrics_port=8009))
    assert (parsed.prometheus_host, parsed.prometheus_port) == ("127.0.0.1", 8009)
    assert resolve_router(None) == "smg"  # smg is installed here


async def test_two_groups_on_one_host_only_on_loopback(standin: Standin) -> None:
    """The bug that started this: both routers wanted 0.0.0.0:29000."""
    config = standin(replicas=2, router_policy="round_robin")
    assert config.router is None
    assert config.router_command is None
    async with AsyncSGLangModel(MODEL, server=config) as first, \
            AsyncSGLangModel(MODEL, server=config) as second:  # fmt: skip
        replies = await asyncio.gather(*(
            m.run([{"role": "user", "content": f"hello {i}"}]) for i, m in
            enumerate([first, second, first, second])))  # fmt: skip
        assert all((r.choices[0].message.content or "").startswith("You said: hello")
                   for r in replies)
        for model in (first, second):
            group = _group(model)
            assert group.kind == "smg"
            key = model.server.api_key if model.server else None
            assert key
            for pid in group.pids:
                proc = psutil.Process(pid)
                assert key not in " ".join(proc.cmdline()), proc.cmdline()
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        assert conn.laddr.ip in ("127.0.0.1", "::1"), (proc.cmdline(), conn)
            async with httpx.AsyncClient(timeout=5) as http:
                metrics = await http.get(group.metrics_urls()["router"])
                assert metrics.status_code == 200
                assert "smg_" in metrics.text
                # smg does not route /tokenize: the direct URLs do.
                routed = await http.post(f"{model.base_url}/tokenize", json={"prompt": "hi"},
                                         headers={"Authorization": f"Bearer {key}"})
                assert routed.status_code == 404
                direct = group.direct_urls()
                assert len(direct) == 2
                tokens = await http.post(f"{direct[0]}/tokenize", json={"prompt": "hi there"},
                                         headers={"Authorization": f"Bearer {key}"})
                assert tokens.status_code == 200
                assert tokens.json()["count"] >= 2
                for url in direct:  # abort goes to every worker
                    aborted = await http.post(f"{url}/abort_request", json={"rid": "x"},
                                              headers={"Authorization": f"Bearer {key}"})
                    assert aborted.status_code != 404  # the router answers 404 here
                # smg's own validation and error body (translated by the request layer)
                bad = await http.post(
                    f"{model.base_url}/v1/chat/completions",
                    json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                          "max_tokens": 0},
                    headers={"Authorization": f"Bearer {key}"})
                assert bad.status_code == 400
                assert set(bad.json()["error"]) >= {"message", "type", "code"}
        first_ports = {_group(first).metrics_port, _group(second).metrics_port}
        assert len(first_ports) == 2
        assert 29000 not in first_ports


async def test_workers_elsewhere_added_listed_removed(
    standin: Standin, remote: StandinFactory, events_file: Path
) -> None:
    key = secrets.token_hex(16)
    far = remote.launch(api_key=key, wait=False)
    later = remote.launch(api_key=key, wait=False)
    await asyncio.gather(wait_healthy(far.base_url), wait_healthy(later.base_url))
    events: list[ServerEvent] = []
    config = standin(replicas=1, worker_urls=[far.base_url], api_key=key,
                     router_policy="round_robin")
    async with AsyncSGLangModel(MODEL, server=config, on_event=events.append) as model:
        group = _group(model)
        listed = await model.workers()  # the model's public API over the group
        assert {(w.url, w.local, w.healthy) for w in listed} == {
            (group.local_workers[0].url, True, True), (far.base_url, False, True)}
        assert all(w.id for w in listed)

        new_id = await model.add_worker(later.base_url)
        await _wait(lambda: any(w.id == new_id and w.healthy for w in group.workers()))
        for i in range(6):
            await model.run([{"role": "user", "content": f"spread {i}"}])
        assert any(e["event"] == "request" for e in later.events())
        assert any(e["event"] == "request" for e in far.events())

        await model.remove_worker(new_id)
        assert later.base_url not in {w.url for w in group.workers()}
        assert later.proc.poll() is None  # a worker elsewhere is not ours to stop
        served = len([e for e in later.events() if e["event"] == "request"])
        for i in range(4):
            await model.run([{"role": "user", "content": f"after removal {i}"}])
        assert len([e for e in later.events() if e["event"] == "request"]) == served

        # A worker elsewhere dies: reported, out of rotation within seconds, nothing lost.
        far.kill_tree()
        took = await _wait(lambda: any(e.kind == "worker_unhealthy" for e in events))
        assert took < 10
        replies = await asyncio.gather(*(
            model.run([{"role": "user", "content": f"survivor {i}"}]) for i in range(4)))
        assert all(r.choices[0].message.content for r in replies)
        assert far.base_url not in group.direct_urls()

        local = group.local_workers[0]
        assert local.process is not None
        local_pid = local.process.pid
        await model.remove_worker(local.router_id or local.url)
        assert not psutil.pid_exists(local_pid) or psutil.Process(local_pid).status() == "zombie"
        assert "worker_relaunched" not in [e.kind for e in events]
    served_by = Counter(e["pid"] for e in read_events(events_file) if e["event"] == "request")
    assert local_pid in served_by


async def test_remote_only_group(remote: StandinFactory, standin: Standin) -> None:
    key = secrets.token_hex(16)
    workers = [remote.launch(api_key=key, wait=False) for _ in range(2)]
    await asyncio.gather(*(wait_healthy(w.base_url) for w in workers))
    config = standin(replicas=0, worker_urls=[w.base_url for w in workers], api_key=key,
                     router_policy="round_robin")
    async with AsyncSGLangModel(MODEL, server=config) as model:
        group = _group(model)
        assert group.local_workers == []
        assert len(group.pids) == 1
        for i in range(4):
            await model.run([{"role": "user", "content": f"remote {i}"}])
        assert all(any(e["event"] == "request" for e in w.events()) for w in workers)


async def test_sglang_router_still_supported(standin: Standin) -> None:
    pytest.importorskip("sglang_router")
    async with AsyncSGLangModel(MODEL, server=standin(replicas=2, router="sglang-router")) as m:
        group = _group(m)
        assert group.kind == "sglang-router"
        reply = await m.run([{"role": "user", "content": "old router"}])
        assert (reply.choices[0].message.content or "").startswith("You said: old router")
        assert {w.healthy for w in group.workers()} == {True}


async def test_count_text_and_abort_through_a_group(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, server=standin(replicas=2)) as model:
        await model.abort("no-such-request")  # goes to every worker; the router would 404
        assert await model.token_counter.count_text("hello there world") >= 3  # a worker's /tokenize
        assert await model.token_counter.count_tokens_from_messages(
            [{"role": "user", "content": "hello"}]) > 1
        ids = await model.tokenize("hello there")
        assert await model.detokenize(ids) == "hello there"
