"""SIGKILL of the launching Python process, at the awkward moments: while the server loads,
while a stream is open, and after an idle-stop relaunch (a second incarnation). Async and
sync facades. The whole tree — and the reaper watcher — must be gone within 2 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from ._support import alive, tree

PRELUDE = """
import asyncio, json, sys, time
from sglang_backend import AsyncSGLangModel, SGLangModel, ServerConfig, ServerState
from sglang_backend._reaper import reaper
from sglang_backend.testing import standin_command

def config(*flags, **kw):
    return ServerConfig(launch_command=standin_command(), extra_args=list(flags), **kw)

def report(pid):
    print(json.dumps({"pid": pid, "watcher": reaper.watcher_pid}), flush=True)

HELLO = [{"role": "user", "content": "hi"}]
"""

SCRIPTS = {
    ("async", "loading"): """
async def main():
    model = AsyncSGLangModel("m", server=config("--standin-load-seconds", "60"))
    task = asyncio.ensure_future(model.start())
    while model.pid is None:
        await asyncio.sleep(0.01)
    report(model.pid)
    await task
asyncio.run(main())
""",
    ("async", "streaming"): """
async def main():
    model = AsyncSGLangModel("m", {"max_tokens": 200}, server=config("--standin-token-delay", "0.2"))
    stream = await model.run(HELLO, stream=True)
    await stream.__anext__()
    report(model.pid)
    async for _ in stream:
        pass
asyncio.run(main())
""",
    ("async", "relaunched"): """
async def main():
    model = AsyncSGLangModel("m", server=config(inactivity_timeout=0.3))
    await model.run(HELLO)
    while model.state is not ServerState.STOPPED:
        await asyncio.sleep(0.02)
    await model.run(HELLO)
    assert model.server.launches == 2
    report(model.pid)
    await asyncio.sleep(3600)
asyncio.run(main())
""",
    ("sync", "loading"): """
import threading
model = SGLangModel("m", server=config("--standin-load-seconds", "60"))
threading.Thread(target=model.start, daemon=True).start()
while model.pid is None:
    time.sleep(0.01)
report(model.pid)
time.sleep(3600)
""",
    ("sync", "streaming"): """
model = SGLangModel("m", {"max_tokens": 200}, server=config("--standin-token-delay", "0.2"))
stream = model.run(HELLO, stream=True)
next(stream)
report(model.pid)
for _ in stream:
    pass
""",
    ("sync", "relaunched"): """
model = SGLangModel("m", server=config(inactivity_timeout=0.3))
model.run(HELLO)
while model.state is not ServerState.STOPPED:
    time.sleep(0.02)
model.run(HELLO)
assert model.async_model.server.launches == 2
report(model.pid)
time.sleep(3600)
""",
}


@pytest.mark.parametrize("moment", ["loading", "streaming", "relaunched"])
@pytest.mark.parametrize("api", ["async", "sync"])
def test_sigkill_of_the_launcher_takes_the_whole_tree(
    tmp_path: Path, api: str, moment: str
) -> None:
    script = tmp_path / "launcher.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(SCRIPTS[api, moment]))
    launcher = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        line = launcher.stdout.readline()
        assert line, f"the launcher script failed (exit {launcher.wait()})"
        info = json.loads(line)
        pid, watcher = info["pid"], info["watcher"]
        assert watcher is not None, "the reaper watcher was not running"
        # Wait until the server tree is complete (launcher + scheduler + detokenizer).
        deadline = time.monotonic() + 20
        while len(alive(tree(pid))) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        procs = alive(tree(pid))
        assert len(procs) >= 3, procs
        procs.append(psutil.Process(watcher))
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        killed = time.monotonic()
        deadline = killed + 2.0
        while alive(procs) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = alive(procs)
        assert not left, f"survived their SIGKILLed launcher by 2 s: {left}"
        print(f"{api}/{moment}: {len(procs)} processes gone "
              f"{time.monotonic() - killed:.2f} s after SIGKILL")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
