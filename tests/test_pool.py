"""ModelPool against real stand-in servers: LRU swaps, groups, pins, GPU budgets, busy members
never evicted, the bounded wait queue, one cold start at a time, pool events."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sglang_backend import (
    ConfigError,
    ModelClosedError,
    ModelPool,
    ServerConfig,
    ServerEvent,
    ServerStartError,
    ServerState,
)
from sglang_backend.pool import PoolQueueFullError, PoolTimeoutError, UnknownModelError
from sglang_backend.pool_sync import SyncModelPool

from .conftest import MODEL, read_events

MESSAGES = [{"role": "user", "content": "hello"}]
Standin = Callable[..., ServerConfig]


def _kinds(events: list[ServerEvent], kind: str) -> list[str]:
    return [e.detail["model"] for e in events if e.kind == kind]


def _pool(standin: Standin, names: str, events: list[ServerEvent], *, load_seconds: float = 0.0,
          **options: Any) -> ModelPool:
    pool = ModelPool(on_event=events.append, **options)
    for name in names:
        flags = {"load_seconds": load_seconds} if load_seconds else {}
        pool.add(name, MODEL, server=standin(served_model_name=name, **flags))
    return pool


def _windows(events: list[ServerEvent]) -> list[tuple[float, float, str]]:
    """(loading time, loaded time, model) for each start."""
    opened: dict[str, float] = {}
    spans = []
    for event in events:
        name = event.detail.get("model")
        if event.kind == "loading":
            opened[name] = event.time
        elif event.kind in ("loaded", "load_failed"):
            spans.append((opened.pop(name), event.time, name))
    return sorted(spans)


async def test_lru_swap_a_b_then_c_stops_a(standin: Standin) -> None:
    events: list[ServerEvent] = []
    async with _pool(standin, "abc", events, max_loaded=2) as pool:
        assert pool.loaded() == []
        for name in "ab":
            reply = await pool.model(name).run(MESSAGES)
            assert reply.model == name
        assert sorted(pool.loaded()) == ["a", "b"]
        pid_a = pool.model("a").model.pid
        await pool.model("c").run(MESSAGES)
        assert sorted(pool.loaded()) == ["b", "c"]
        assert _kinds(events, "evicted") == ["a"]
        evicted = next(e for e in events if e.kind == "evicted")
        assert evicted.detail["reason"] == "max_loaded"
        assert evicted.detail["for_model"] == "c"
        assert evicted.detail["duration"] >= 0
        assert pool.model("a").model.pid is None
        assert pid_a is not None
        # b was used last before c: asking for a again evicts b, not c.
        await pool.model("c").run(MESSAGES)
        await pool.model("a").run(MESSAGES)
        assert _kinds(events, "evicted") == ["a", "b"]
        assert sorted(pool.loaded()) == ["a", "c"]
        loaded = [e for e in events if e.kind == "loaded"]
        assert [e.detail["model"] for e in loaded] == ["a", "b", "c", "a"]
        assert all(e.detail["duration"] > 0 for e in loaded)
    assert pool.loaded() == []
    assert all(pool.model(n).model.pid is None for n in "abc")


async def test_concurrent_requests_and_starts_never_overlap(standin: Standin,
                                                            events_file: Path) -> None:
    events: list[ServerEvent] = []
    async with _pool(standin, "ab", events, max_loaded=2, load_seconds=0.4) as pool:
        # Both cold at once: both load (room for two), one after the other.
        replies = await asyncio.gather(*(pool.model(n).run(MESSAGES) for n in "abab" * 3))
        assert [r.model for r in replies] == list("abab" * 3)
        spans = _windows(events)
        assert [s[2] for s in spans] in (["a", "b"], ["b", "a"])
        assert spans[0][1] <= spans[1][0], f"starts overlapped: {spans}"
        waited = [e.detail["waited"] for e in events if e.kind == "loaded"]
        assert max(waited) >= 0.3  # the second start queued behind the first
        assert [pool.model(n).model.server.launches for n in "ab"] == [1, 1]  # type: ignore[union-attr]
        assert _kinds(events, "evicted") == []
        # The servers' own view: the second process wrote nothing before the first was ready.
        lines = read_events(events_file)
        first_pid = next(e["pid"] for e in lines)
        first_ready = next(e["t"] for e in lines if e["event"] == "ready" and e["pid"] == first_pid)
        second = [e["t"] for e in lines if e["pid"] != first_pid]
        assert second
        assert min(second) >= first_ready


async def test_serial_starts_none_lets_starts_overlap(standin: Standin) -> None:
    events: list[ServerEvent] = []
    async with _pool(standin, "ab", events, serial_starts="none", load_seconds=1.0) as pool:
        await asyncio.gather(pool.model("a").start(), pool.model("b").start())
        first, second = _windows(events)
        assert second[0] < first[1]  # the control: without the rule they do overlap


async def test_open_stream_is_never_evicted_and_queue_bounds(standin: Standin) -> None:
    events: list[ServerEvent] = []
    pool = _pool(standin, "abc", events, max_loaded=2, wait_timeout=1.0, max_waiting=1)
    async with pool:
        stream = await pool.model("a").run(MESSAGES, stream=True)
        first = await stream.__anext__()
        assert first is not None
        await pool.model("b").run(MESSAGES)
        # a is older but streaming: b goes.
        await pool.model("c").run(MESSAGES)
        assert _kinds(events, "evicted") == ["b"]
        assert sorted(pool.loaded()) == ["a", "c"]
        stream_c = await pool.model("c").run(MESSAGES, stream=True)
        await stream_c.__anext__()
        # Both loaded members are busy: b waits, then times out with a typed error.
        waiting = asyncio.ensure_future(pool.model("b").run(MESSAGES))
        await asyncio.sleep(0.2)
        assert pool.waiting == 1
        with pytest.raises(PoolQueueFullError, match="max_waiting=1"):
            await pool.model("b").run(MESSAGES)  # the bound is full: refused at once
        with pytest.raises(PoolTimeoutError, match="'b'"):
            await waiting
        assert sorted(pool.loaded()) == ["a", "c"]
        # Once a's stream is closed, a is the one to go.
        await stream.aclose()
        await pool.model("b").run(MESSAGES)
        assert _kinds(events, "evicted") == ["b", "a"]
        assert sorted(pool.loaded()) == ["b", "c"]
        await stream_c.aclose()


async def test_waiter_proceeds_when_stream_closes(standin: Standin) -> None:
    events: list[ServerEvent] = []
    async with _pool(standin, "ab", events, max_loaded=1) as pool:
        stream = await pool.model("a").run(MESSAGES, stream=True)
        waiting = asyncio.ensure_future(pool.model("b").run(MESSAGES))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        assert pool.loaded() == ["a"]
        chunks = [chunk async for chunk in stream]  # exhausted: the lease goes
        assert chunks
        reply = await asyncio.wait_for(waiting, 30)
        assert reply.model == "b"
        assert pool.loaded() == ["b"]


async def test_pinned_and_groups(standin: Standin) -> None:
    events: list[ServerEvent] = []
    pool = ModelPool(max_loaded=2, on_event=events.append)
    pool.add("router", MODEL, server=standin(served_model_name="router"), pinned=True,
             aliases=("small",))
    pool.add("big1", MODEL, server=standin(served_model_name="big1"), group="big")
    pool.add("big2", MODEL, server=standin(served_model_name="big2"), group="big")
    async with pool:
        assert pool.loaded() == ["router"]  # pinned members load with the pool
        await pool.model("big1").run(MESSAGES)
        await pool.model("big2").run(MESSAGES)  # same group: big1 goes (router is older)
        assert sorted(pool.loaded()) == ["big2", "router"]
        assert _kinds(events, "evicted") == ["big1"]
        assert next(e for e in events if e.kind == "evicted").detail["reason"] == "group"
        assert (await pool.model("small").run(MESSAGES)).model == "router"


async def test_gpu_budgets_disjoint_coexist_same_gpu_swaps(standin: Standin) -> None:
    events: list[ServerEvent] = []
    pool = ModelPool(on_event=events.append)  # no count limit: only the GPU budgets
    pool.add("g0a", MODEL, server=standin(served_model_name="g0a", mem_fraction_static=0.6))
    pool.add("g1", MODEL, server=standin(served_model_name="g1", base_gpu_id=1,
                                         mem_fraction_static=0.6))
    pool.add("g0b", MODEL, server=standin(served_model_name="g0b"), gpus=[0], memory=0.5)
    async with pool:
        await asyncio.gather(pool.model("g0a").start(), pool.model("g1").start())
        assert sorted(pool.loaded()) == ["g0a", "g1"]
        await pool.model("g0b").run(MESSAGES)
        assert sorted(pool.loaded()) == ["g0b", "g1"]
        evicted = [e for e in events if e.kind == "evicted"]
        assert [e.detail["model"] for e in evicted] == ["g0a"]
        assert evicted[0].detail["reason"] == "gpu_memory"
        # Disjoint GPU sets start concurrently under serial_starts="gpus".
        spans = {s[2]: s for s in _windows(events)}
        assert spans["g0a"][0] < spans["g1"][1]
        assert spans["g1"][0] < spans["g0a"][1]
        loading = next(e for e in events if e.kind == "loading" and e.detail["model"] == "g1")
        assert loading.detail["gpus"] == [1]


async def test_member_idle_stop_is_seen_and_reloads(standin: Standin) -> None:
    events: list[ServerEvent] = []
    pool = ModelPool(max_loaded=1, on_event=events.append)
    pool.add("a", MODEL, server=standin(served_model_name="a", inactivity_timeout=0.5))
    async with pool:
        await pool.model("a").run(MESSAGES)
        for _ in range(200):
            if "a" in _kinds(events, "unloaded"):
                break
            await asyncio.sleep(0.05)
        assert pool.loaded() == []
        assert any(e.kind == "unloaded" and e.detail["reason"] == "idle" for e in events)
        assert any(e.kind == "idle_stopped" and e.detail["model"] == "a" for e in events)
        await pool.model("a").run(MESSAGES)
        assert pool.loaded() == ["a"]
        assert _kinds(events, "loaded") == ["a", "a"]


async def test_openai_client_and_unknown_model(standin: Standin) -> None:
    events: list[ServerEvent] = []
    async with _pool(standin, "ab", events, max_loaded=1) as pool:
        client = pool.model("a").openai_client()
        completion = await client.completions.create(model="a", prompt="Hi", max_tokens=4)
        assert completion.choices
        assert pool.loaded() == ["a"]
        stream = await client.chat.completions.create(model="a", messages=MESSAGES, stream=True)
        # b must wait for a's open SDK stream
        waiting = asyncio.ensure_future(pool.model("b").run(MESSAGES))
        await asyncio.sleep(0.4)
        assert not waiting.done()
        async for _chunk in stream:
            pass
        await asyncio.wait_for(waiting, 30)
        assert pool.loaded() == ["b"]
        await client.close()
        await pool.model("b").stop()
        assert pool.loaded() == []
        info_a = await pool.model("a").server_info()  # any model method, admitted: loads a
        assert isinstance(info_a, dict)
        assert pool.loaded() == ["a"]
        await pool.model("b").abort_all()  # never loads a model for nothing
        assert pool.loaded() == ["a"]
        with pytest.raises(AttributeError, match=r"pool\.aclose"):
            await pool.model("a").aclose()
        with pytest.raises(UnknownModelError) as info:
            pool.model("nope")
        assert info.value.known == ["a", "b"]
        assert "known models: a, b" in str(info.value)


def test_sync_twin_swaps_and_streams(standin: Standin) -> None:
    events: list[ServerEvent] = []
    with SyncModelPool(max_loaded=1, on_event=events.append) as pool:
        pool.add("a", MODEL, server=standin(served_model_name="a"))
        b = pool.add("b", MODEL, server=standin(served_model_name="b"))
        assert pool.model("a").run(MESSAGES).model == "a"
        chunks = list(b.run(MESSAGES, stream=True))
        assert chunks
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert pool.loaded() == ["b"]
        assert _kinds(events, "evicted") == ["a"]
        assert b.generate("Hello", sampling_params={"max_new_tokens": 4}).text
    assert pool.loaded() == []
    with pytest.raises(ModelClosedError):
        pool.model("a").run(MESSAGES)


async def test_failed_load_reaches_every_waiter_and_the_pool_goes_on(standin: Standin) -> None:
    events: list[ServerEvent] = []
    pool = ModelPool(max_loaded=1, on_event=events.append)
    pool.add("broken", MODEL, server=standin(served_model_name="broken", fail_at_load=True))
    pool.add("ok", MODEL, server=standin(served_model_name="ok"))
    async with pool:
        results = await asyncio.gather(*(pool.model("broken").run(MESSAGES) for _ in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, ServerStartError) for r in results), results
        assert _kinds(events, "load_failed") == ["broken"]  # one start shared by three waiters
        assert pool.loaded() == []
        assert pool.waiting == 0
        assert (await pool.model("ok").run(MESSAGES)).model == "ok"
        assert _kinds(events, "evicted") == []  # a failed member holds no room


async def test_evict_by_sleep_keeps_the_process_and_wakes_it(standin: Standin,
                                                              events_file: Path) -> None:
    events: list[ServerEvent] = []
    async with ModelPool(max_loaded=1, on_event=events.append) as pool:
        a = pool.add("a", MODEL, server=standin(served_model_name="a"), evict="sleep")
        b = pool.add("b", MODEL, server=standin(served_model_name="b"))
        assert pool.describe()[0]["evict"] == "sleep"
        await a.run(MESSAGES)
        pid_a = a.model.pid
        info = await a.model.server_info()  # SGLang frees and restores memory only with these
        assert info["enable_memory_saver"] is True
        assert info["enable_weights_cpu_backup"] is True
        await b.run(MESSAGES)  # a makes room by sleeping: its process is kept
        evicted = next(e for e in events if e.kind == "evicted")
        assert (evicted.detail["model"], evicted.detail["how"]) == ("a", "sleep")
        assert a.state is ServerState.SLEEPING
        assert a.model.pid == pid_a
        assert pool.loaded() == ["b"]
        assert [e["event"] for e in read_events(events_file)].count("release_memory") == 1

        reply = await a.run(MESSAGES)  # b is stopped (its default); a wakes, not relaunched
        assert reply.model == "a"
        assert pool.loaded() == ["a"]
        assert b.model.pid is None
        assert a.model.pid == pid_a
        assert a.model.server is not None
        assert a.model.server.launches == 1
        assert [e.detail["how"] for e in events if e.kind == "evicted"] == ["sleep", "stop"]
        woke = [e.detail["woke"] for e in events if e.kind == "loaded" and e.detail["model"] == "a"]
        assert woke == [False, True]
        assert "resume_memory" in [e["event"] for e in read_events(events_file)]
    assert a.model.pid is None  # closing the pool stops sleeping members too


def test_evict_must_be_stop_or_sleep() -> None:
    with pytest.raises(ConfigError, match="evict"):
        ModelPool().add("a", MODEL, evict="hibernate")  # type: ignore[arg-type]


def test_sync_pool_openai_client_is_admitted_by_the_pool(standin: Standin) -> None:
    events: list[ServerEvent] = []
    with SyncModelPool(max_loaded=1, on_event=events.append) as pool:
        a = pool.add("a", MODEL, server=standin(served_model_name="a"), evict="sleep")
        b = pool.add("b", MODEL, server=standin(served_model_name="b"))
        client = a.openai_client()
        reply = client.chat.completions.create(model=a.request_model, messages=MESSAGES)
        assert reply.model == "a"
        assert pool.loaded() == ["a"]
        stream = client.chat.completions.create(model="a", messages=MESSAGES, stream=True)
        # While a's SDK stream is open, a cannot be evicted: b's request waits for it.
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            waiting = executor.submit(
                lambda: b.openai_client().chat.completions.create(model="b", messages=MESSAGES))
            time.sleep(0.4)
            assert not waiting.done()
            assert a.state is ServerState.READY
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text
            stream.close()
            assert waiting.result(timeout=30).model == "b"
        assert pool.loaded() == ["b"]
        assert a.state is ServerState.SLEEPING
        assert a.openai_client().completions.create(model="a", prompt="Hi", max_tokens=3).choices
        assert pool.loaded() == ["a"]
        assert a.sleep() is True
        assert a.state is ServerState.SLEEPING
        client.close()
    assert pool.loaded() == []
