"""Side-by-side benchmarks of sglang_backend against the raw SDK and CAMEL's reference.

Run by ``nox -s bench`` (or ``python bench/run.py [--quick] [--only METRIC ...]``). Writes
``bench/results.json``, ``docs/benchmarks.md`` and ``docs/img/bench_ratios.png``. Every ratio
is measured in this one run on this one machine; see docs/benchmarks.md for how to read it.

Metrics: ready, fail, stall (cold starts, one fresh interpreter per repeat), throughput,
streaming, sync, stop, memory, camel (reference, in its own venv), sdk (throughput again in a
venv with another openai generation: ``--sdk-venv PATH``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
import report
import streaming
import sync_overhead
import throughput

METRICS = ["ready", "fail", "stall", "throughput", "streaming", "sync", "stop", "memory",
           "camel", "sdk"]
CAMEL_VENV = common.BENCH_DIR / ".venv-camel"
CAMEL_PACKAGE = "camel-ai==0.2.90"
STUBBORN_GRACE = 1.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _script(name: str, *args: str, python: str = sys.executable) -> list[str]:
    return [python, str(common.BENCH_DIR / name), *args]


def _repeat(argv: list[str], times: int, timeout: float, what: str) -> list[dict[str, Any]]:
    runs = []
    for i in range(times):
        result = common.run_json(argv, timeout=timeout)
        if "error" in result:
            log(f"  {what} {i + 1}/{times}: FAILED {result}")
        else:
            log(f"  {what} {i + 1}/{times}: " + ", ".join(
                f"{k}={v:.1f}" for k, v in result.items() if isinstance(v, float)))
        runs.append(result)
    return runs


def _values(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in runs if isinstance(r.get(key), (int, float))]


def cold_starts(quick: bool) -> dict[str, Any]:
    runs = _repeat(_script("lifecycle.py", "cold"), 3 if quick else 7, 120, "cold start")
    return {
        "ready_to_reply_ms": common.summary(_values(runs, "ready_to_reply_ms"), 2),
        "ready_to_start_return_ms": common.summary(_values(runs, "ready_to_start_return_ms"), 2),
        "launch_to_ready_s": common.summary(_values(runs, "launch_to_ready_s"), 3),
        "stall_max_ms": common.summary(_values(runs, "stall_max_ms"), 2),
        "idle_loop_stall_max_ms": common.summary(_values(runs, "idle_loop_stall_max_ms"), 2),
        "stall_worst_examples": [r.get("stall_worst") for r in runs],
        "errors": [r for r in runs if "error" in r],
    }


def start_failures(quick: bool) -> dict[str, Any]:
    runs = _repeat(_script("lifecycle.py", "fail"), 3 if quick else 7, 120, "start failure")
    return {
        "fail_to_error_ms": common.summary(_values(runs, "fail_to_error_ms"), 2),
        "error_types": sorted({str(r.get("error_type")) for r in runs}),
        "log_tail_has_cause": all(r.get("log_tail_has_cause") for r in runs),
        "errors": [r for r in runs if "error" in r],
    }


def stops(quick: bool) -> dict[str, Any]:
    idle = _repeat(_script("lifecycle.py", "stop"), 2 if quick else 5, 120, "stop idle")
    stubborn = _repeat(_script("lifecycle.py", "stop", "--grace", str(STUBBORN_GRACE)),
                       1 if quick else 3, 120, "stop stubborn")
    return {
        "idle_s": common.summary(_values(idle, "stop_s"), 3),
        "stubborn_s": common.summary(_values(stubborn, "stop_s"), 3),
        "stubborn_grace_s": STUBBORN_GRACE,
        "survivors": sum(int(r.get("survivors", 0)) for r in idle + stubborn),
        "tree_size": common.summary(_values(idle, "tree_size"), 0),
        "errors": [r for r in idle + stubborn if "error" in r],
    }


def memory(url: str, quick: bool) -> dict[str, Any]:
    large = 2000 if quick else 10_000
    out: dict[str, Any] = {}
    for client in ("openai", "model"):
        result = common.run_json(
            _script("memory.py", "--url", url, "--client", client, "--small", "100",
                    "--large", str(large)), timeout=900)
        log(f"  memory {client}: {result}")
        out[client] = result
    return out


def camel_env() -> dict[str, str] | None:
    python = CAMEL_VENV / "bin" / "python"
    if not python.exists():
        log(f"  creating {CAMEL_VENV} with {CAMEL_PACKAGE} (separate venv: it pins its own deps)")
        made = subprocess.run([sys.executable, "-m", "venv", str(CAMEL_VENV)], check=False)
        if made.returncode == 0:
            made = subprocess.run([str(python), "-m", "pip", "install", "-q", CAMEL_PACKAGE],
                                  check=False)
        if made.returncode != 0:
            return None
    return {
        "PATH": f"{CAMEL_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(common.BENCH_DIR / "shim"),
        "SGLB_STANDIN_PYTHON": sys.executable,
        "VIRTUAL_ENV": str(CAMEL_VENV),
    }


def camel(url: str, quick: bool) -> dict[str, Any]:
    env = camel_env()
    if env is None:
        return {"error": f"could not install {CAMEL_PACKAGE} into {CAMEL_VENV}"}
    python = str(CAMEL_VENV / "bin" / "python")
    out: dict[str, Any] = {}

    def run(what: str, *args: str, times: int = 1, timeout: float = 300) -> list[dict[str, Any]]:
        runs = []
        for i in range(times):
            result = common.run_json(_script("camel_ref.py", *args, python=python),
                                     timeout=timeout, env=env)
            log(f"  camel {what} {i + 1}/{times}: " + json.dumps(
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()
                 if k not in ("stall_worst", "by_concurrency", "versions")})[:300])
            runs.append(result)
        return runs

    cold = run("cold", "cold", times=2 if quick else 3)
    out["cold"] = {
        "ready_to_reply_ms": common.summary(_values(cold, "ready_to_reply_ms"), 1),
        "stall_max_ms": common.summary(_values(cold, "stall_max_ms"), 1),
        "stop_s": common.summary(_values(cold, "stop_s"), 3),
        "survivors": sum(int(r.get("survivors", 0)) for r in cold),
        "errors": [r for r in cold if "error" in r],
    }
    stubborn = run("stubborn", "stubborn")
    out["stubborn_stop_s"] = common.summary(_values(stubborn, "stop_s"), 3)
    timeout = 6.0 if quick else 15.0
    failed = run("fail", "fail", "--timeout", str(timeout))
    out["fail"] = {**failed[0], "fail_to_error_ms": common.summary(
        _values(failed, "fail_to_error_ms"), 1)}
    tp_args = ["throughput", "--url", url] + (["--quick"] if quick else [])
    out["throughput"] = run("throughput", *tp_args, timeout=1800)[0]
    out["stream"] = run("stream", "stream", "--url", url)[0]
    out["versions"] = cold[0].get("versions") if cold else None
    return out


def sdk_generation(venv: str, url: str, quick: bool) -> dict[str, Any]:
    python = str(Path(venv) / "bin" / "python")
    args = ["--url", url] + (["--quick"] if quick else [])
    result = common.run_json(_script("throughput.py", *args, python=python), timeout=1800)
    log(f"  sdk venv {venv}: {result.get('versions') or result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a few minutes)")
    parser.add_argument("--only", nargs="+", choices=METRICS, metavar="METRIC",
                        help=f"run only these ({', '.join(METRICS)}); other results are kept")
    parser.add_argument("--out", default=str(common.BENCH_DIR / "results.json"))
    parser.add_argument("--doc", default=str(common.ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--chart", default=str(common.ROOT / "docs" / "img" / "bench_ratios.png"))
    parser.add_argument("--no-camel", action="store_true", help="skip the CAMEL reference")
    parser.add_argument("--sdk-venv", default=None,
                        help="a venv with another openai generation (and this package) for "
                             "metric 4 again")
    args = parser.parse_args()
    selected = set(args.only or [m for m in METRICS if m != "sdk" or args.sdk_venv])
    if args.no_camel:
        selected.discard("camel")
    if "sdk" in selected and not args.sdk_venv:
        parser.error("--only sdk needs --sdk-venv PATH")

    out_path = Path(args.out)
    results: dict[str, Any] = {}
    if args.only and out_path.exists():
        results = json.loads(out_path.read_text())
    started = time.monotonic()
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "metrics_run": sorted(selected),
        "machine": common.machine_info(),
        "versions": common.versions(),
        "git": common.git_state(),
    }
    results.setdefault("runs", {})
    for metric in selected:
        results["runs"][metric] = {"date": meta["date"], "quick": args.quick}
    results["meta"] = meta

    if selected & {"ready", "stall"}:
        log("cold starts (ready → first reply, loop stalls)")
        results["cold_start"] = cold_starts(args.quick)
    if "fail" in selected:
        log("start failures")
        results["start_failure"] = start_failures(args.quick)
    if "stop" in selected:
        log("stop times")
        results["stop"] = stops(args.quick)

    needs_server = selected & {"throughput", "streaming", "sync", "memory", "camel", "sdk"}
    if needs_server:
        with common.running_standin() as server:
            url = server.url
            if "throughput" in selected:
                log("throughput / CPU per request")
                results["throughput"] = asyncio.run(
                    throughput.measure(url, None, throughput.ALL, args.quick, log=log))
            if "streaming" in selected:
                log("streaming")
                results["streaming"] = asyncio.run(streaming.measure(url, args.quick, log=log))
            if "sync" in selected:
                log("sync facade overhead")
                results["sync_facade"] = sync_overhead.measure(url, args.quick, log=log)
            if "memory" in selected:
                log("memory")
                results["memory"] = memory(url, args.quick)
            if "camel" in selected:
                log("CAMEL reference")
                results["camel"] = camel(url, args.quick)
            if "sdk" in selected:
                log("second openai generation")
                results["sdk_generation"] = sdk_generation(args.sdk_venv, url, args.quick)

    meta["duration_s"] = round(time.monotonic() - started, 1)
    meta["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["leftover_processes"] = common.leftover_children()
    out_path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    markdown = report.render(results)
    Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
    Path(args.doc).write_text(markdown)
    Path(args.chart).parent.mkdir(parents=True, exist_ok=True)
    report.chart(results, Path(args.chart))
    print(report.table(results))
    log(f"wrote {out_path}, {args.doc}, {args.chart} in {meta['duration_s']} s")


if __name__ == "__main__":
    main()
