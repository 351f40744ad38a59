"""The reference: CAMEL's ``SGLangModel`` on the stand-in. Runs in the CAMEL venv only.

``bench/.venv-camel/bin/python bench/camel_ref.py MODE`` prints one JSON object. Launched modes
need ``bench/shim`` on ``PYTHONPATH`` and ``SGLB_STANDIN_PYTHON`` (see ``shim/sglang``); CAMEL
launches ``python -m sglang.launch_server ... --port 30000 --host 0.0.0.0`` with the first
``python`` on ``PATH`` and lets the server write to its own stdout, so this script moves its
stdout aside first and writes the JSON to the saved descriptor.

Modes: ``cold`` (ready → first ``arun`` reply, loop stall, then ``cleanup()`` time),
``stubborn`` (cleanup of a SIGTERM-ignoring tree), ``fail`` (fail event → exception, bounded by
``--timeout``), ``throughput --url U`` (``arun`` vs raw AsyncOpenAI, interleaved, in this
process), ``stream --url U`` (does streaming work at all).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import common
import psutil

PORT = 30000


def _launched(events: Path, *extra: str) -> None:
    os.environ["SGLB_STANDIN_EXTRA"] = json.dumps(
        ["--standin-events-file", str(events), *extra])


def _tree_of_camel(model: Any) -> list[psutil.Process]:
    proc = getattr(model, "server_process", None)
    if proc is None:
        return []
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


async def cold(load_seconds: float, stubborn: bool) -> dict[str, Any]:
    from camel.models import SGLangModel

    events = Path(tempfile.mkdtemp(prefix="sglb-camel-")) / "events.jsonl"
    extra = ["--standin-load-seconds", str(load_seconds)]
    if stubborn:
        extra.append("--standin-ignore-sigterm")
    _launched(events, *extra)
    beat = common.Heartbeat()
    loop = asyncio.get_running_loop()
    model = SGLangModel(common.MODEL, {"max_tokens": common.MAX_TOKENS}, timeout=120)
    origin = loop.time()
    await beat.start()
    t_begin = time.time()
    reply = await model.arun(common.MESSAGES)  # type: ignore[arg-type]
    t_reply = time.time()
    await beat.stop()
    tree = _tree_of_camel(model)
    t0 = time.perf_counter()
    model.cleanup()
    stop_s = time.perf_counter() - t0
    await asyncio.sleep(0.2)  # let SIGKILLed processes go
    survivors = common.alive(tree)
    for pid in survivors:
        common.kill_tree(pid)
    t_ready = common.event_time(events, "ready")
    assert t_ready is not None
    return {
        "reply_ok": bool(reply.choices[0].message.content),  # type: ignore[union-attr]
        "ready_to_reply_ms": (t_reply - t_ready) * 1e3,
        "launch_to_ready_s": t_ready - t_begin,
        "stall_max_ms": max((late for _, late in beat.samples), default=0.0) * 1e3,
        "stall_worst": beat.worst(origin),
        "stop_s": stop_s,
        "tree_size": len(tree),
        "survivors": len(survivors),
    }


async def fail(load_seconds: float, timeout: float) -> dict[str, Any]:
    from camel.models import SGLangModel

    events = Path(tempfile.mkdtemp(prefix="sglb-camel-")) / "events.jsonl"
    _launched(events, "--standin-load-seconds", str(load_seconds),
              "--standin-fail-at-load", "bench: injected CUDA out of memory")
    model = SGLangModel(common.MODEL, {"max_tokens": common.MAX_TOKENS}, timeout=timeout)
    error: BaseException | None = None
    try:
        await model.arun(common.MESSAGES)  # type: ignore[arg-type]
    except Exception as exc:
        error = exc
    t_caught = time.time()
    t_fail = common.event_time(events, "fail")
    model.cleanup()
    return {
        "fail_to_error_ms": (t_caught - t_fail) * 1e3 if t_fail else None,
        "error_type": type(error).__name__ if error else None,
        "error": str(error)[:300] if error else None,
        "timeout_s": timeout,
        "note": "CAMEL polls /v1/models until its timeout; the server's exit is not watched",
    }


async def throughput(url: str, quick: bool) -> dict[str, Any]:
    import openai
    from camel.models import SGLangModel

    requests, rounds = ({1: 60, 32: 320, 256: 512}, 2) if quick else (
        {1: 200, 32: 1000, 256: 1536}, 5)
    model = SGLangModel(common.MODEL, {"max_tokens": common.MAX_TOKENS}, url=f"{url}/v1")
    raw = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none")

    async def camel_one() -> None:
        await model.arun(common.MESSAGES)  # type: ignore[arg-type]

    async def raw_one() -> None:
        await raw.chat.completions.create(
            model=common.MODEL, messages=common.MESSAGES,  # type: ignore[arg-type]
            max_tokens=common.MAX_TOKENS)

    async def drive(call: Any, conc: int, n: int) -> None:
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                await call()

        await asyncio.gather(*(worker() for _ in range(min(conc, n))))

    variants = {"raw_openai": raw_one, "camel": camel_one}
    out: dict[str, Any] = {}
    for conc, n in requests.items():
        series: dict[str, dict[str, list[float]]] = {
            k: {"rps": [], "cpu_us": []} for k in variants}
        for r in range(rounds):
            names = list(variants) if r % 2 == 0 else list(variants)[::-1]
            for name in names:
                await drive(variants[name], conc, min(n, max(conc * 2, 20)))
                gc.collect()
                t0, c0 = time.perf_counter(), time.process_time()
                await drive(variants[name], conc, n)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                series[name]["rps"].append(n / wall)
                series[name]["cpu_us"].append(cpu / n * 1e6)
            print(f"  camel c={conc} round {r + 1}: " + ", ".join(
                f"{k}={series[k]['rps'][-1]:.0f}/s {series[k]['cpu_us'][-1]:.0f}µs"
                for k in variants), file=sys.stderr)
        row = {}
        for name, s in series.items():
            base = series["raw_openai"]
            row[name] = {
                "rps": common.summary(s["rps"], 1),
                "cpu_us_per_request": common.summary(s["cpu_us"], 1),
                "rps_ratio": common.summary(
                    [a / b for a, b in zip(s["rps"], base["rps"], strict=True)], 3),
                "cpu_ratio": common.summary(
                    [a / b for a, b in zip(s["cpu_us"], base["cpu_us"], strict=True)], 3),
            }
        out[str(conc)] = row
    await raw.close()
    return {"requests": {str(c): n for c, n in requests.items()}, "rounds": rounds,
            "by_concurrency": out}


async def stream(url: str) -> dict[str, Any]:
    from camel.models import SGLangModel

    model = SGLangModel(common.MODEL, {"max_tokens": common.MAX_TOKENS, "stream": True},
                        url=f"{url}/v1")
    try:
        result = await model.arun(common.MESSAGES)  # type: ignore[arg-type]
        chunks = 0
        async for _ in result:  # type: ignore[union-attr]
            chunks += 1
        return {"ok": True, "chunks": chunks}
    except Exception as exc:
        return {"ok": False, "error_type": type(exc).__name__, "error": str(exc)[:300],
                "where": traceback.format_exc(limit=3).splitlines()[-3:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["cold", "stubborn", "fail", "throughput", "stream"])
    parser.add_argument("--url")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--load-seconds", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args()
    # CAMEL's server inherits stdout: keep ours for the JSON, send fd 1 to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if args.mode in ("cold", "stubborn", "fail") and not common.port_free(PORT):
        result: dict[str, Any] = {"error": f"port {PORT} is busy (CAMEL's fixed port)"}
    elif args.mode == "cold":
        result = asyncio.run(cold(args.load_seconds, stubborn=False))
    elif args.mode == "stubborn":
        result = asyncio.run(cold(args.load_seconds, stubborn=True))
    elif args.mode == "fail":
        result = asyncio.run(fail(args.load_seconds, args.timeout))
    elif args.mode == "throughput":
        result = asyncio.run(throughput(args.url, args.quick))
    else:
        result = asyncio.run(stream(args.url))
    import camel
    import openai

    result["versions"] = {"camel-ai": getattr(camel, "__version__", None),
                          "openai": openai.__version__}
    out.write(json.dumps(result) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
