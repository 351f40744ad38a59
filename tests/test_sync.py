"""SGLangModel, the blocking facade: the async scenarios again, from plain threads."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from sglang_backend import (
    ModelClosedError,
    ServerConfig,
    ServerCrashedError,
    ServerStartError,
    ServerState,
    SGLangModel,
)

from .conftest import MODEL

Standin = Callable[..., ServerConfig]
HELLO = [{"role": "user", "content": "Hello there"}]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class City(BaseModel):
    name: str
    population: int


def test_context_manager_run_and_close(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin()) as model:
        assert model.state is ServerState.READY
        pid = model.pid
        assert pid is not None
        reply = model.run(HELLO)
        assert isinstance(reply, ChatCompletion)
        assert "Hello there" in (reply.choices[0].message.content or "")
    assert model.state is ServerState.CLOSED
    assert not _alive(pid)
    model.close()  # idempotent
    model.cleanup()
    with pytest.raises(ModelClosedError):
        model.run(HELLO)


def test_plain_use_lazy_start_and_cleanup(standin: Standin) -> None:
    model = SGLangModel(MODEL, server=standin())
    assert model.state is ServerState.CREATED
    try:
        reply = model.run(HELLO)
        assert reply.choices[0].message.content  # type: ignore[union-attr]
        assert model.state is ServerState.READY
    finally:
        model.cleanup()
    assert model.state is ServerState.CLOSED


def test_start_failure_is_typed(standin: Standin) -> None:
    model = SGLangModel(MODEL, server=standin(fail_at_load="no such model (stand-in)"))
    try:
        with pytest.raises(ServerStartError, match="no such model"):
            model.run(HELLO)
        with pytest.raises(ServerStartError, match="no such model"), model:
            pass  # __enter__ starts, and reports the same failure
    finally:
        model.close()


def test_streaming_iterator_and_break_closes(standin: Standin) -> None:
    with SGLangModel(MODEL, {"stream": True}, server=standin(token_delay=0.05)) as model:
        assert model.stream is True
        chunks = list(model.run(HELLO))  # type: ignore[call-overload]
        assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
        assert chunks[-1].usage is not None
        server = model.async_model.server
        assert server is not None
        assert server.inflight == 0
        for index, _chunk in enumerate(model.run(HELLO)):  # type: ignore[arg-type]
            if index == 2:
                break
        gc.collect()
        deadline = time.monotonic() + 5
        while server.inflight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.inflight == 0


def test_structured_output_and_tools(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin(tool_call_parser="qwen")) as model:
        reply = model.run(HELLO, response_format=City)
        parsed = reply.choices[0].message.parsed  # type: ignore[union-attr]
        assert isinstance(parsed, City)
        tool = {"type": "function", "function": {
            "name": "get_time", "parameters": {"type": "object", "properties": {
                "zone": {"type": "string"}}, "required": ["zone"]}}}
        called = model.run([{"role": "user", "content": "call get_time"}], tools=[tool])
        calls = called.choices[0].message.tool_calls  # type: ignore[union-attr]
        assert calls
        assert json.loads(calls[0].function.arguments)["zone"]


def test_token_counter_is_sync(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin()) as model:
        count = model.token_counter.count_tokens_from_messages(HELLO)
        reply = model.run(HELLO)
        assert reply.usage is not None  # type: ignore[union-attr]
        assert count == reply.usage.prompt_tokens  # type: ignore[union-attr]


def test_works_inside_a_running_event_loop(standin: Standin) -> None:
    async def notebook_cell() -> str:
        # A Jupyter cell: sync code called while this thread's loop runs.
        with SGLangModel(MODEL, server=standin()) as model:
            reply = model.run(HELLO)
            return reply.choices[0].message.content or ""  # type: ignore[union-attr]

    assert "Hello there" in asyncio.run(notebook_cell())


def test_watchdog_runs_while_caller_is_idle(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin(inactivity_timeout=0.5)) as model:
        pid = model.pid
        assert pid is not None
        model.run(HELLO)
        deadline = time.monotonic() + 10
        while model.state is not ServerState.STOPPED and time.monotonic() < deadline:
            time.sleep(0.05)  # the caller does nothing; the loop thread works
        assert model.state is ServerState.STOPPED
        assert not _alive(pid)
        model.run(HELLO)  # relaunches
        assert model.pid not in (None, pid)


def test_thread_safe_concurrent_calls(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin()) as model:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: model.run(
                [{"role": "user", "content": f"thread {i}"}]), range(40)))
        contents = [r.choices[0].message.content or "" for r in replies]  # type: ignore[union-attr]
        assert all(f"thread {i}" in c for i, c in enumerate(contents))
        server = model.async_model.server
        assert server is not None
        assert server.launches == 1


def test_keyboard_interrupt_cancels_request_and_model_stays_usable(standin: Standin) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread")
    with SGLangModel(MODEL, {"max_tokens": 50}, server=standin(token_delay=0.1)) as model:
        # A real SIGINT to the main thread, as a terminal's Ctrl-C delivers it: the blocking
        # read in this thread is interrupted (interrupt_main only sets a flag checked between
        # bytecodes, which a thread blocked in recv() never reaches).
        timer = threading.Timer(
            0.5, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
        )
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            model.run([{"role": "user", "content": " ".join(["word"] * 60)}])
        assert time.monotonic() - started < 4  # did not wait for the 5 s generation
        server = model.async_model.server
        assert server is not None
        assert server.inflight == 0
        reply = model.run(HELLO)
        assert reply.choices[0].message.content  # type: ignore[union-attr]


def test_crash_mid_request_then_relaunch(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin(crash_after=1)) as model:
        first = model.pid
        model.run(HELLO)
        with pytest.raises(ServerCrashedError):
            model.run(HELLO)
        model.run(HELLO)
        assert model.pid != first


def test_unclosed_facade_is_cleaned_up_on_gc_with_resource_warning(standin: Standin) -> None:
    model = SGLangModel(MODEL, server=standin())
    model.start()
    pid = model.pid
    assert pid is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del model
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert not _alive(pid)


def test_unclosed_facade_is_cleaned_up_at_interpreter_exit(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        from sglang_backend import SGLangModel, ServerConfig
        from sglang_backend.testing import standin_command

        model = SGLangModel("m", server=ServerConfig(launch_command=standin_command()))
        model.start()
        print(model.pid, flush=True)
    """))
    done = subprocess.run([sys.executable, "-W", "always", str(script)],
                          capture_output=True, text=True, timeout=60, check=True)
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10  # normally gone before the script exits
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)
    assert "ResourceWarning" in done.stderr


def test_sigkill_of_script_kills_server_tree(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import time
        from sglang_backend import SGLangModel, ServerConfig
        from sglang_backend.testing import standin_command

        model = SGLangModel("m", server=ServerConfig(launch_command=standin_command()))
        model.start()
        print(model.pid, flush=True)
        time.sleep(3600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        assert len(tree) >= 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 2.0
        while any(_alive(p.pid) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_alive(p.pid) for p in tree)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_blocking_call_from_the_models_own_loop_thread_is_an_error_not_a_hang(
    standin: Standin,
) -> None:
    seen: list[BaseException] = []

    def on_event(event: object) -> None:
        if getattr(event, "kind", None) == "ready":
            try:
                model.is_ready()  # runs on the loop thread: would wait for itself
            except RuntimeError as exc:
                seen.append(exc)

    model = SGLangModel(MODEL, server=standin(), on_event=on_event)
    try:
        model.start()
        assert seen
        assert "own event loop thread" in str(seen[0])
        assert model.run(HELLO).choices  # the model is unharmed
    finally:
        model.close()
