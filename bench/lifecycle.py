"""Metrics 1, 2, 3 and 7: cold start, start failure, event-loop stalls, stop time.

Each repeat runs in a fresh interpreter (``python bench/lifecycle.py MODE``), because a cold
start is only cold once per process: the SDK's lazy imports and the SSL context are paid by the
first model of a process. Each run prints one JSON object; ``run.py`` collects the repeats.

Ground truth comes from the stand-in's events file (``time.time()`` written by the server):

* ``cold``   ready event → first ``run()`` returned (after ``await model.start()``), and the
  longest lateness of a 1 ms heartbeat task over start + first reply (plus the same heartbeat
  on an idle loop for 0.5 s before, as the noise floor of this machine);
* ``fail``   ``fail`` event → typed error caught by ``await model.start()``;
* ``stop``   ``await model.aclose()`` wall time on an idle tree, or on a tree that ignores
  SIGTERM (``--grace G``: ``ServerConfig(shutdown_timeout=G)``), and which pids survived it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import psutil

from sglang_backend import AsyncSGLangModel, ServerConfig, ServerStartError
from sglang_backend.testing import standin_command


def _config(events: Path, *extra: str, **kwargs: Any) -> ServerConfig:
    return ServerConfig(
        launch_command=standin_command(),
        extra_args=["--standin-events-file", str(events), *extra],
        inactivity_timeout=None,
        **kwargs,
    )


async def cold(load_seconds: float) -> dict[str, Any]:
    events = Path(tempfile.mkdtemp(prefix="sglb-bench-")) / "events.jsonl"
    beat = common.Heartbeat()
    loop = asyncio.get_running_loop()
    await beat.start()
    await asyncio.sleep(0.5)
    await beat.stop()
    idle_worst = max((late for _, late in beat.samples), default=0.0)

    model = AsyncSGLangModel(
        common.MODEL, {"max_tokens": common.MAX_TOKENS},
        server=_config(events, "--standin-load-seconds", str(load_seconds)),
    )
    try:
        origin = loop.time()
        await beat.start()
        t_begin = time.time()
        await model.start()
        t_started = time.time()
        reply = await model.run(common.MESSAGES, stream=False)
        t_reply = time.time()
        await beat.stop()
        assert reply.choices[0].message.content
    finally:
        await model.aclose()
    t_ready = common.event_time(events, "ready")
    assert t_ready is not None, "no ready event"
    return {
        "ready_to_reply_ms": (t_reply - t_ready) * 1e3,
        "ready_to_start_return_ms": (t_started - t_ready) * 1e3,
        "launch_to_ready_s": t_ready - t_begin,
        "stall_max_ms": max(late for _, late in beat.samples) * 1e3,
        "stall_worst": beat.worst(origin),
        "idle_loop_stall_max_ms": idle_worst * 1e3,
    }


async def fail(load_seconds: float) -> dict[str, Any]:
    events = Path(tempfile.mkdtemp(prefix="sglb-bench-")) / "events.jsonl"
    message = "bench: injected CUDA out of memory"
    model = AsyncSGLangModel(
        common.MODEL,
        server=_config(events, "--standin-load-seconds", str(load_seconds),
                       "--standin-fail-at-load", message),
    )
    caught: BaseException | None = None
    try:
        await model.start()
    except ServerStartError as exc:
        caught = exc
    t_caught = time.time()
    await model.aclose()
    t_fail = common.event_time(events, "fail")
    assert t_fail is not None, "no fail event"
    assert caught is not None, "start did not fail"
    tail = "\n".join(getattr(caught, "log_tail", None) or [])
    return {
        "fail_to_error_ms": (t_caught - t_fail) * 1e3,
        "error_type": type(caught).__name__,
        "log_tail_has_cause": message in tail or message in str(caught),
    }


async def stop(grace: float | None) -> dict[str, Any]:
    events = Path(tempfile.mkdtemp(prefix="sglb-bench-")) / "events.jsonl"
    extra = ["--standin-ignore-sigterm"] if grace is not None else []
    kwargs = {"shutdown_timeout": grace} if grace is not None else {}
    model = AsyncSGLangModel(common.MODEL, {"max_tokens": common.MAX_TOKENS},
                             server=_config(events, *extra, **kwargs))
    await model.start()
    await model.run(common.MESSAGES, stream=False)
    assert model.pid is not None
    root = psutil.Process(model.pid)
    tree = [root, *root.children(recursive=True)]
    t0 = time.perf_counter()
    await model.aclose()
    elapsed = time.perf_counter() - t0
    survivors = common.alive(tree)
    for pid in survivors:
        common.kill_tree(pid)
    return {"stop_s": elapsed, "tree_size": len(tree), "survivors": len(survivors),
            "grace_s": grace}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["cold", "fail", "stop"])
    parser.add_argument("--load-seconds", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=None)
    args = parser.parse_args()
    if args.mode == "cold":
        result = asyncio.run(cold(args.load_seconds))
    elif args.mode == "fail":
        result = asyncio.run(fail(args.load_seconds))
    else:
        result = asyncio.run(stop(args.grace))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
