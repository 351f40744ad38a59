"""Fork safety: a forked child never touches the parent's server or loop and exits promptly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from .conftest import MODEL

# Run in a fresh interpreter: forking the pytest process itself would copy the test runner.
_SCRIPT = textwrap.dedent("""
    import asyncio, os, sys, time
    from sglang_backend import {cls}, ModelClosedError, ServerConfig
    from sglang_backend.testing import standin_command

    MESSAGES = [{{"role": "user", "content": "Hi"}}]
    config = ServerConfig(launch_command=standin_command(), shutdown_timeout=5, startup_timeout=60)
    model = {cls}({model!r}, server=config)
    {start}
    pid = os.fork()
    if pid == 0:  # the child: using the inherited model is a clear error, exit is normal
        try:
            {use}
        except ModelClosedError as exc:
            print("child refused:", exc, flush=True)
        sys.exit(0)  # atexit and finalizers run here: they must not hang
    started = time.monotonic()
    _, status = os.waitpid(pid, 0)
    print("child exit", os.waitstatus_to_exitcode(status), round(time.monotonic() - started, 2))
    {use_parent}
    print("parent still served", flush=True)
    {close}
""")

_SYNC = {
    "cls": "SGLangModel",
    "start": "model.start()",
    "use": "model.run(MESSAGES)",
    "use_parent": "assert model.run(MESSAGES).choices",
    "close": "model.close()",
}
# An asyncio program forks from inside its running loop; the child must not run that loop
# (its epoll instance is shared with the parent: Python's own rule), so it uses the model from a
# fresh loop in a thread and leaves with os._exit.
_ASYNC_SCRIPT = textwrap.dedent("""
    import asyncio, os, threading, time
    from sglang_backend import AsyncSGLangModel, ModelClosedError, ServerConfig
    from sglang_backend.testing import standin_command

    MESSAGES = [{{"role": "user", "content": "Hi"}}]

    def child(model):
        try:
            asyncio.run(model.run(MESSAGES))
        except ModelClosedError as exc:
            print("child refused:", exc, flush=True)
        asyncio.run(model.aclose())  # closing the inherited model must not stop the parent's server

    async def main():
        config = ServerConfig(launch_command=standin_command(), shutdown_timeout=5, startup_timeout=60)
        async with AsyncSGLangModel({model!r}, server=config) as model:
            pid = os.fork()
            if pid == 0:
                worker = threading.Thread(target=child, args=(model,))
                worker.start()
                worker.join()
                os._exit(0)
            started = time.monotonic()
            _, status = await asyncio.to_thread(os.waitpid, pid, 0)
            print("child exit", os.waitstatus_to_exitcode(status), round(time.monotonic() - started, 2))
            assert (await model.run(MESSAGES)).choices
            print("parent still served", flush=True)

    asyncio.run(main())
""")


def _run(script: str) -> str:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < 90
    return done.stdout


# The defect was a child that hung forever at exit; this bound only tells a hang from an exit
# (how fast a child exits is not asserted: tests never assert speed).
_HANG_SECONDS = 30.0


def _child_seconds(out: str) -> float:
    line = next(line for line in out.splitlines() if line.startswith("child exit"))
    code, seconds = line.split()[2:]
    assert code == "0"
    return float(seconds)


def test_a_forked_child_of_a_facade_user_refuses_the_model_and_exits_promptly() -> None:
    out = _run(_SCRIPT.format(model=MODEL, **_SYNC))
    assert "child refused: this SGLangModel belongs to process" in out
    assert _child_seconds(out) < _HANG_SECONDS
    assert "parent still served" in out


def test_a_forked_child_of_an_async_user_refuses_the_model() -> None:
    out = _run(_ASYNC_SCRIPT.format(model=MODEL))
    assert "child refused: this model belongs to process" in out
    assert _child_seconds(out) < _HANG_SECONDS
    assert "parent still served" in out
