"""Workers on several "machines": Linux network namespaces, each with its own address.

The test makes three namespaces, joined to this one by veth pairs with addresses from
10.213.N.0/30 that it assigns itself (``.1`` here, ``.2`` inside), runs a stand-in worker inside
each one bound to its namespace's address, and puts the real smg (launched by the library, in
this namespace) in front. Traffic goes only to those addresses and loopback. Everything is torn
down in the fixture's finalizer, also when the test fails. Needs root and ``ip`` (iproute2).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sglang_backend import AsyncSGLangModel, ServerConfig, ServerEvent
from sglang_backend.router import RouterGroup
from sglang_backend.testing import standin_command

from ._net import wait_healthy
from .conftest import MODEL

pytest.importorskip("smg.launch_router", reason="needs smg ([router] extra)")
pytestmark = pytest.mark.router

_SUBNET = "10.213"
_PORT = 30000
REPO_ROOT = Path(__file__).resolve().parents[1]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def _why_not() -> str | None:
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if _SUBNET + "." in _ip("-4", "addr", check=False).stdout:
        return f"{_SUBNET}.0.0/16 is already in use on this machine"
    probe = f"sgb-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create network namespaces here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """One namespace ("machine") with its address and, once started, its stand-in."""

    netns: str
    veth: str
    address: str
    events: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{_PORT}"

    def served(self) -> int:
        if not self.events.exists():
            return 0
        lines = self.events.read_text().splitlines()
        return sum(1 for line in lines if line and json.loads(line)["event"] == "request")

    def start(self, key: str, *flags: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        argv = ["ip", "netns", "exec", self.netns, *standin_command(), "--model-path", MODEL,
                "--host", self.address, "--port", str(_PORT), "--api-key", key,
                "--standin-events-file", str(self.events), *flags]
        # `ip netns exec` execs the command: the pid is the stand-in's.
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=env, start_new_session=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(10)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[Host]]:
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    tag = f"{os.getpid() % 10000}{secrets.token_hex(1)}"
    made: list[Host] = []
    try:
        for i in range(3):
            host = Host(f"sgb-{tag}-{i}", f"sgb{tag}{i}", f"{_SUBNET}.{i}.2",
                        tmp_path / f"events{i}.jsonl")
            _ip("netns", "add", host.netns)
            made.append(host)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", host.veth + "p")
            _ip("link", "set", host.veth + "p", "netns", host.netns)
            _ip("addr", "add", f"{_SUBNET}.{i}.1/30", "dev", host.veth)
            _ip("link", "set", host.veth, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/30", "dev", host.veth + "p")
            _ip("-n", host.netns, "link", "set", host.veth + "p", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
        yield made
    finally:
        for host in made:
            host.kill()
            _ip("link", "del", host.veth, check=False)  # takes the peer with it
            _ip("netns", "del", host.netns, check=False)
        left = _ip("netns", "list", check=False).stdout
        assert not any(h.netns in left for h in made), left


async def test_workers_in_three_namespaces_behind_smg(hosts: list[Host]) -> None:
    key = secrets.token_hex(16)
    first, second, third = hosts
    first.start(key)
    second.start(key, "--standin-token-delay", "0.05")  # slow enough to be drained mid-stream
    third.start(key)
    await asyncio.gather(*(wait_healthy(h.url) for h in hosts))

    events: list[ServerEvent] = []
    config = ServerConfig(replicas=0, worker_urls=[first.url, second.url], api_key=key,
                          router_policy="round_robin", startup_timeout=60, shutdown_timeout=5)
    async with AsyncSGLangModel(MODEL, model_config_dict={"max_tokens": 32}, server=config,
                                on_event=events.append) as model:
        assert model.server is not None
        group = model.server.process
        assert isinstance(group, RouterGroup)

        # Requests reach every "host".
        for i in range(6):
            await model.run([{"role": "user", "content": f"hello {i}"}])
        assert first.served() >= 2
        assert second.served() >= 2

        # A namespace's worker dies under load: rotation continues, no request is lost.
        failures: list[BaseException] = []
        done = 0

        async def load() -> None:
            nonlocal done
            while not stop.is_set():
                try:
                    await model.run([{"role": "user", "content": "under load"}])
                    done += 1
                except Exception as exc:  # counted: the assertion below reports them
                    failures.append(exc)

        stop = asyncio.Event()
        loaders = [asyncio.ensure_future(load()) for _ in range(3)]
        await asyncio.sleep(0.5)
        first.kill()
        killed_at = time.monotonic()
        while not any(e.kind == "worker_unhealthy" for e in events):
            assert time.monotonic() - killed_at < 15, "the dead worker was never reported"
            await asyncio.sleep(0.1)
        print(f"dead worker reported after {time.monotonic() - killed_at:.2f} s")
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*loaders)
        assert failures == []
        assert done > 0
        print(f"{done} requests under load while a worker died, none failed")
        assert first.url not in group.direct_urls()

        # A worker in a third namespace joins and serves within seconds.
        added_at = time.monotonic()
        third_id = await model.server.add_worker(third.url)
        while third.served() == 0:
            assert time.monotonic() - added_at < 20, "the added worker never served"
            await model.run([{"role": "user", "content": "anyone new?"}])
        print(f"added worker served after {time.monotonic() - added_at:.2f} s")
        assert {w.url for w in model.server.workers() if w.healthy} >= {second.url, third.url}

        # remove_worker drains: a stream in flight on the removed worker finishes whole.
        second_id = next(w.id for w in model.server.workers() if w.url == second.url)
        before = second.served()
        streams = []
        for _ in range(2):  # round robin over the two healthy workers: one lands on `second`
            streams.append(await model.run([{"role": "user", "content": "a long answer"}],
                                           stream=True))
        assert second.served() > before

        async def drain(stream: object) -> str:
            return "".join([c.choices[0].delta.content or ""
                            async for c in stream if c.choices])  # type: ignore[attr-defined]

        texts, _ = await asyncio.gather(asyncio.gather(*(drain(s) for s in streams)),
                                        model.server.remove_worker(second_id))
        assert all(t.startswith("You said: a long answer") for t in texts)
        assert second.url not in {w.url for w in model.server.workers()}
        assert second.proc is not None
        assert second.proc.poll() is None  # elsewhere: drained, not stopped
        served = second.served()
        for i in range(3):
            await model.run([{"role": "user", "content": f"after {i}"}])
        assert second.served() == served
        assert third_id in {w.id for w in model.server.workers()}
