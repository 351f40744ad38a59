"""Render ``results.json`` as Markdown (docs/benchmarks.md) and a ratio chart (PNG, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from throughput import LABELS

CONCURRENCIES = ("1", "32", "256")
RPS_GOAL, CPU_GOAL = 0.97, 1.10
SYNC_POOL_GOAL, SYNC_STREAM_GOAL = 0.95, 1.05  # the facade against the blocking SDK


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _fmt(s: Any, unit: str = "", digits: int = 1) -> str:
    if not isinstance(s, dict) or s.get("median") is None:
        return "—"
    med, lo, hi = s["median"], s["min"], s["max"]
    if s.get("n", 0) <= 1:
        return f"{med:.{digits}f}{unit}"
    return f"{med:.{digits}f}{unit} ({lo:.{digits}f}-{hi:.{digits}f})"


def _verdict(s: Any, limit: float, *, at_least: bool = False) -> str:
    if not isinstance(s, dict) or s.get("median") is None:
        return "not measured"
    med = s["median"]
    ok = med >= limit if at_least else med <= limit
    if ok:
        return "met"
    miss = (limit - med) / limit if at_least else (med - limit) / limit
    return f"**missed** by {miss:.0%}"


def _label(name: str, results: dict[str, Any]) -> str:
    stack = _get(results, "meta", "versions", "http_stack") or "httpx"
    return LABELS.get(name, name).format(stack=stack)


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    cold = results.get("cold_start", {})
    fail = results.get("start_failure", {})
    stop = results.get("stop", {})
    sync = results.get("sync_facade", {})
    camel = results.get("camel", {})
    rows: list[list[str]] = []
    rows.append(["1. ready → first reply", "≤ 50 ms",
                 _fmt(cold.get("ready_to_reply_ms"), " ms"),
                 _verdict(cold.get("ready_to_reply_ms"), 50),
                 _fmt(_get(camel, "cold", "ready_to_reply_ms"), " ms", 0)])
    camel_fail = _get(camel, "fail")
    camel_fail_text = "—"
    if isinstance(camel_fail, dict) and camel_fail.get("fail_to_error_ms"):
        camel_fail_text = (f"{_fmt(camel_fail['fail_to_error_ms'], ' ms', 0)} "
                           f"(= its timeout {camel_fail.get('timeout_s', '?')} s, "
                           f"{camel_fail.get('error_type')})")
    rows.append(["2. start failure → typed error", "≤ 200 ms",
                 _fmt(fail.get("fail_to_error_ms"), " ms") + (
                     f" ({', '.join(fail['error_types'])})" if fail.get("error_types") else ""),
                 _verdict(fail.get("fail_to_error_ms"), 200), camel_fail_text])
    rows.append(["3. longest loop stall, cold start", "≤ 10 ms",
                 _fmt(cold.get("stall_max_ms"), " ms") +
                 f"; idle-loop floor {_fmt(cold.get('idle_loop_stall_max_ms'), ' ms')}",
                 _verdict(cold.get("stall_max_ms"), 10),
                 _fmt(_get(camel, "cold", "stall_max_ms"), " ms", 0)])
    tp = _get(results, "throughput", "by_concurrency") or {}
    ctp = _get(camel, "throughput", "by_concurrency") or {}
    for name in ("model_url", "model_url_key", "model_launched", "sync_pool"):
        for conc in CONCURRENCIES:
            entry = _get(tp, conc, name)
            if entry is None:
                continue
            camel_text = "—"
            if name == "model_url" and _get(ctp, conc, "camel"):
                camel_text = (f"{_fmt(ctp[conc]['camel']['rps_ratio'], 'x', 2)} / "
                               f"{_fmt(ctp[conc]['camel']['cpu_ratio'], 'x', 2)}")
            if name == "sync_pool" and "rps_vs_control" in entry:
                rows.append([f"4. {_label(name, results)} vs the blocking `openai.OpenAI` in the "
                             f"same pool, c={conc}: throughput / CPU per request",
                             f"≥ {SYNC_POOL_GOAL:.2f}x / (report)",
                             f"{_fmt(entry['rps_vs_control'], 'x', 2)} / "
                             f"{_fmt(entry['cpu_vs_control'], 'x', 2)}",
                             _verdict(entry["rps_vs_control"], SYNC_POOL_GOAL, at_least=True),
                             "—"])
                continue
            rows.append([f"4. {_label(name, results)}, c={conc}: throughput / CPU per request",
                         "≥ 0.97x / ≤ 1.10x",
                         f"{_fmt(entry['rps_ratio'], 'x', 2)} / {_fmt(entry['cpu_ratio'], 'x', 2)}",
                         f"{_verdict(entry['rps_ratio'], RPS_GOAL, at_least=True)} / "
                         f"{_verdict(entry['cpu_ratio'], CPU_GOAL)}", camel_text])
    streaming = _get(results, "streaming", "variants") or {}
    for name, label in (("model", "AsyncSGLangModel"), ("sync_model", "SGLangModel iterator")):
        if name in streaming:
            v = streaming[name]
            rows.append([f"5. stream, {label}: client CPU per chunk over raw", "(report)",
                         f"+{_fmt(v['overhead_cpu_us_per_chunk'], ' µs')} "
                         f"({_fmt(v['cpu_ratio'], 'x', 2)})", "—",
                         _camel_stream(camel) if name == "model" else "—"])
    blocking = _get(streaming, "sync_model", "cpu_vs_blocking_sdk")
    if blocking is not None:
        rows.append(["5. stream, SGLangModel iterator: client CPU per chunk vs the blocking "
                     "`openai.OpenAI` stream", f"≤ {SYNC_STREAM_GOAL:.2f}x",
                     _fmt(blocking, "x", 2), _verdict(blocking, SYNC_STREAM_GOAL), "—"])
    rows.append(["6. sync facade overhead per call", "≤ 150 µs",
                 _fmt(sync.get("overhead_us_per_call"), " µs"),
                 _verdict(sync.get("overhead_us_per_call"), 150), "—"])
    grace = stop.get("stubborn_grace_s", 1.0)
    rows.append(["7. stop, idle tree", "≤ 1 s", _fmt(stop.get("idle_s"), " s", 3),
                 _verdict(stop.get("idle_s"), 1.0),
                 _fmt(_get(camel, "cold", "stop_s"), " s", 3) + " (SIGKILL at once)"])
    rows.append([f"7. stop, SIGTERM-ignoring tree (g = {grace:g} s)", f"≤ {grace + 0.5:g} s",
                 _fmt(stop.get("stubborn_s"), " s", 3) +
                 f"; survivors: {stop.get('survivors', '—')}",
                 _verdict(stop.get("stubborn_s"), grace + 0.5),
                 _fmt(camel.get("stubborn_stop_s"), " s", 3)])
    mem = results.get("memory", {})
    if "model" in mem and "rss_large_mb" in mem["model"]:
        m, o = mem["model"], mem.get("openai", {})
        rows.append([f"8. client RSS growth, {m['requests_small']} → {m['requests_large']} requests",
                     "(report)",
                     f"+{m['growth_mb']:.1f} MB (raw AsyncOpenAI: "
                     f"+{o.get('growth_mb', float('nan')):.1f} MB); "
                     f"RSS {m['rss_large_mb']:.0f} MB", "—", "—"])
    return rows


def _camel_stream(camel: dict[str, Any]) -> str:
    stream = camel.get("stream")
    if not isinstance(stream, dict):
        return "—"
    if stream.get("ok"):
        return f"works ({stream.get('chunks')} chunks)"
    return f"fails: {stream.get('error_type')}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def throughput_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    tp = _get(results, "throughput", "by_concurrency") or {}
    ctp = _get(results, "camel", "throughput", "by_concurrency") or {}
    for conc in CONCURRENCIES:
        for name, entry in (tp.get(conc) or {}).items():
            rows.append([conc, _label(name, results), _fmt(entry["rps"], "/s", 0),
                         _fmt(entry["cpu_us_per_request"], " µs", 0),
                         _fmt(entry.get("rps_ratio"), "x", 3), _fmt(entry.get("cpu_ratio"), "x", 3)])
        camel = _get(ctp, conc, "camel")
        if camel:
            rows.append([conc, "CAMEL SGLangModel.arun (url) — ratio vs raw in its own process",
                         _fmt(camel["rps"], "/s", 0), _fmt(camel["cpu_us_per_request"], " µs", 0),
                         _fmt(camel["rps_ratio"], "x", 3), _fmt(camel["cpu_ratio"], "x", 3)])
    return rows


def sdk_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    gens = [("main venv", results.get("throughput"), _get(results, "meta", "versions"))]
    sdk = results.get("sdk_generation")
    if isinstance(sdk, dict) and "by_concurrency" in sdk:
        gens.append(("--sdk-venv", sdk, sdk.get("versions")))
    for where, data, versions in gens:
        if not isinstance(data, dict):
            continue
        v = versions or {}
        for conc in CONCURRENCIES:
            for name in ("raw_openai", "model_url_key", "model_url"):
                entry = _get(data, "by_concurrency", conc, name)
                if entry:
                    rows.append([f"openai {v.get('openai')} on {v.get('http_stack')} ({where})",
                                 conc, _label(name, results),
                                 _fmt(entry["cpu_us_per_request"], " µs", 0),
                                 _fmt(entry.get("cpu_ratio"), "x", 3)])
    return rows


def table(results: dict[str, Any]) -> str:
    parts = [_md_table(["Metric", "Goal", "sglang_backend: median (min-max)", "Verdict",
                        "CAMEL reference"], summary_rows(results)),
             "",
             _md_table(["c", "Client", "Throughput", "CPU / request", "Throughput ratio",
                        "CPU ratio"], throughput_rows(results))]
    return "\n".join(parts)


HOW = """\
## How it was measured

Everything runs on one machine in one run (`nox -s bench`, i.e. `python bench/run.py`): the
server is the package's stand-in (`python -m sglang_backend.testing`, FastAPI/uvicorn on CPU,
deterministic replies) as a real subprocess on a loopback port; the client is this process.
The machine has 2 cores shared by client, server and, for this run, other engineers' test
suites: absolute figures swing, ratios less so. Hence:

* **Ratios are paired.** Each variant runs once per round, variant order alternating between
  rounds; a ratio is a variant's figure divided by raw `openai.AsyncOpenAI`'s in the *same*
  round, and the table shows the median of those ratios with their min-max.
* **CPU per request** is `time.process_time()` of the client process (all its threads)
  divided by requests: it does not depend on how fast the server was, so it is the steadier
  figure. Throughput at c=32/256 is mostly the stand-in's limit (it shares the 2 cores).
* **Ground truth for times** is the stand-in's events file (`--standin-events-file`): the
  `ready`/`fail` events carry the server's own `time.time()`; the client takes `time.time()`
  right after `await model.start(); await model.run(...)` returns (or the error is caught).
* **Cold starts run one fresh interpreter per repeat** (`bench/lifecycle.py`), because only
  the first model of a process pays the SDK's lazy imports and the SSL context. The stand-in
  "loads" for 1 s (`--standin-load-seconds 1`). The loop-stall figure is the largest lateness
  of a task sleeping 1 ms in a loop, from model creation to the first reply; the same
  heartbeat on an idle loop for 0.5 s before gives this machine's noise floor.
* **Launched mode** runs its own stand-in (the library drains its log), the other variants
  share one stand-in started by the bench. The control row "raw AsyncOpenAI → launched
  server" is the raw SDK against the launched server, in the same rounds.
* **Streaming**: `max_tokens=500`; the stand-in echoes at most 64 words of the prompt then
  ends, so the requests also set SGLang's `ignore_eos` and `usage.completion_tokens` is
  checked (= 500).
* **Sync facade**: blocks of sequential calls alternate between `await AsyncSGLangModel.run`
  and `SGLangModel.run` (same server, same key); overhead = per-block difference, median.
* **CAMEL** (`camel-ai`, reference `SGLangModel`) runs in its own venv (`bench/.venv-camel`,
  made by `run.py`), as a subprocess: it launches `python -m sglang.launch_server`, which a
  shim (`bench/shim/sglang/launch_server.py`) turns into the stand-in on CAMEL's fixed port
  30000. Its throughput ratio is against raw AsyncOpenAI measured in that same process.

## How to read it

A throughput ratio ≥ 1 means at least as fast as the raw SDK; a CPU ratio of 1.10 means the
client spends 10 % more CPU per request than the raw SDK does. "(report)" rows have no goal.
Min-max is over repeats (rounds, blocks or fresh processes); medians are what is judged.
"""


def render(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    versions = meta.get("versions", {})
    camel = results.get("camel", {})
    parts = [
        "# Benchmarks",
        "",
        "Side-by-side figures for `sglang_backend` against the raw OpenAI SDK and the reference "
        "implementation (CAMEL's `SGLangModel`), produced by `nox -s bench` "
        "(`bench/run.py`; raw data in `bench/results.json`). Speed claims live here, not in "
        "timed tests.",
        "",
        f"Run: {meta.get('date')}{' (--quick)' if meta.get('quick') else ''}, "
        f"{meta.get('duration_s')} s; machine: {machine.get('cpu_count')} x "
        f"{machine.get('cpu_model')}, {machine.get('memory_gb')} GB, load average "
        f"{machine.get('load_avg_at_start')} → {meta.get('load_avg_at_end')} "
        "(shared with other engineers' test runs: treat absolute figures as indicative).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) +
        (f"; reference camel-ai {_get(camel, 'versions', 'camel-ai')} with openai "
         f"{_get(camel, 'versions', 'openai')}" if _get(camel, "versions") else ""),
        "",
        _git_line(meta.get("git") or {}),
        "",
        "## Goals vs measured",
        "",
        _md_table(["Metric", "Goal", "sglang_backend: median (min-max)", "Verdict",
                   "CAMEL reference"], summary_rows(results)),
        "",
        "![Throughput and CPU-per-request ratios against raw AsyncOpenAI](img/bench_ratios.png)",
        "",
        "## Throughput and client CPU per request",
        "",
        _md_table(["c", "Client", "Throughput", "CPU / request", "Throughput ratio",
                   "CPU ratio"], throughput_rows(results)),
        "",
    ]
    streaming = _get(results, "streaming", "variants")
    if streaming:
        rows = [[name, _fmt(v["cpu_us_per_chunk"], " µs", 1), _fmt(v["wall_us_per_chunk"], " µs", 1),
                 _fmt(v["chunks_per_stream"], "", 0), _fmt(v["completion_tokens"], "", 0)]
                for name, v in streaming.items()]
        parts += ["## Streaming (500 tokens, one stream at a time)", "",
                  _md_table(["Client", "CPU / chunk", "Wall / chunk", "Chunks / stream",
                             "usage.completion_tokens"], rows), ""]
    sync = results.get("sync_facade")
    if sync:
        parts += ["## Sync facade", "",
                  f"Per call: async {_fmt(sync['async_us_per_call'], ' µs')}, sync "
                  f"{_fmt(sync['sync_us_per_call'], ' µs')}; overhead "
                  f"{_fmt(sync['overhead_us_per_call'], ' µs')} wall, "
                  f"{_fmt(sync['overhead_cpu_us_per_call'], ' µs')} CPU "
                  f"({sync['blocks']} blocks x {sync['calls_per_block']} calls per side). "
                  "Hand-off floor without a server (2,000 no-op calls, median): the facade's "
                  f"portal {_fmt(sync.get('portal_noop_us'), ' µs')}, a bare "
                  "`asyncio.run_coroutine_threadsafe` "
                  f"{_fmt(sync.get('run_coroutine_threadsafe_noop_us'), ' µs')}.", ""]
    sdk = sdk_rows(results)
    if len({row[0] for row in sdk}) > 1:
        parts += ["## Client CPU per request by openai SDK generation", "",
                  _md_table(["SDK", "c", "Client", "CPU / request", "CPU ratio"], sdk), ""]
    if camel:
        parts += ["## The reference (CAMEL `SGLangModel`)", "", _camel_notes(camel), ""]
    notes = diagnosis(results)
    if notes:
        parts += ["## Where goals are missed, and why (diagnosis at the time of the run)", "",
                  *[f"* {n}" for n in notes], ""]
    parts += [HOW]
    return "\n".join(parts)


def _git_line(git: dict[str, Any]) -> str:
    if not git:
        return ""
    modified = git.get("package_modified") or []
    return (f"Code: commit {git.get('commit')}" + (
        f", with uncommitted changes in {', '.join(modified)} (shared work tree)"
        if modified else "") + ".")


def diagnosis(results: dict[str, Any]) -> list[str]:
    """Notes that explain a miss, each emitted only when the data shows the symptom."""
    notes = []
    tp = _get(results, "throughput", "by_concurrency") or {}
    nokey = [_get(tp, c, "model_url", "cpu_ratio", "median") for c in CONCURRENCIES]
    key = [_get(tp, c, "model_url_key", "cpu_ratio", "median") for c in CONCURRENCIES]
    gaps = [a - b for a, b in zip(nokey, key, strict=True) if a is not None and b is not None]
    if gaps and min(gaps) > 0.05:
        notes.append(
            "url mode without an `api_key` costs more CPU per request than with one "
            f"(+{min(gaps):.2f}x to +{max(gaps):.2f}x of raw): `AsyncSGLangModel._openai()` "
            "compares the client's key with `backend.api_key or \"\"`, but `with_options("
            "api_key=\"\")` keeps the old `\"placeholder\"` key, so every request builds a new "
            "`AsyncOpenAI` via `with_options()`. Fix in `model.py`: compare against the key the "
            "client was actually given (or cache the client per (url, key)).")
    cold = results.get("cold_start", {})
    stall = _get(cold, "stall_max_ms", "median")
    if stall is not None and stall > 10:
        notes.append(
            f"Loop stall in a cold start ({stall:.0f} ms median; this machine's idle-loop floor "
            f"{_fmt(_get(cold, 'idle_loop_stall_max_ms'), ' ms')}). Earlier runs traced the worst "
            "stalls to first-use imports of the HTTP stack on the loop (now warmed up in "
            "`_build_clients`' worker thread) and to that thread holding the GIL (5-8 ms); rerun "
            "with `asyncio` debug mode (`slow_callback_duration`) to find the step.")
    facade = results.get("sync_facade") or {}
    sync = _get(facade, "overhead_us_per_call", "median")
    if sync is not None and sync > 150:
        notes.append(
            f"Sync facade overhead {sync:.0f} µs per call. A ready server's call never reaches "
            "the loop thread (`_blocking.BlockingRequestPath` admits under the backend's "
            "thread-safe lock and the SDK's blocking client sends in the caller's thread), so "
            "look for what hops there anyway: a relaunch, a failure being judged, or an "
            "`on_event` callback; the portal's no-op round trip here was "
            f"{_fmt(facade.get('portal_noop_us'), ' µs')}.")
    for conc in CONCURRENCIES:
        ratio = _get(tp, conc, "sync_pool", "rps_vs_control", "median")
        if ratio is not None and ratio < SYNC_POOL_GOAL:
            notes.append(
                f"`SGLangModel` from a thread pool at c={conc}: {ratio:.2f}x the throughput of "
                "the blocking `openai.OpenAI` in the same pool. Both send from the pool's threads "
                "on the same HTTP stack; the difference is the library's per-call work (request "
                "building, admission, translation) under GIL contention: profile `run` there.")
    stream = _get(results, "streaming", "variants", "sync_model", "overhead_cpu_us_per_chunk",
                  "median")
    if stream is not None and stream > 20:
        notes.append(
            f"The sync stream iterator costs +{stream:.0f} µs CPU per chunk over raw: each chunk "
            "is one hand-off through the read-ahead queue (`SyncChatStream`); check that the "
            "reader task is not starved by other work on the model's loop.")
    return notes


def _camel_notes(camel: dict[str, Any]) -> str:
    if "error" in camel:
        return f"Not measured: {camel['error']}."
    lines = [
        f"* Cold start: ready → first reply {_fmt(_get(camel, 'cold', 'ready_to_reply_ms'), ' ms', 0)}"
        " — it polls `/v1/models` (which answers before warm-up) and then sleeps 5 s; `arun` "
        f"blocks the event loop for the whole start (longest stall "
        f"{_fmt(_get(camel, 'cold', 'stall_max_ms'), ' ms', 0)}).",
    ]
    fail = camel.get("fail") or {}
    if fail:
        lines.append(f"* Start failure: noticed only when its timeout ({fail.get('timeout_s')} s "
                     f"here, 180 s by default) runs out, as `{fail.get('error_type')}` without "
                     "the server's log.")
    lines.append(f"* Stop: `cleanup()` SIGKILLs the tree at once "
                 f"({_fmt(_get(camel, 'cold', 'stop_s'), ' s', 3)}; no graceful drain); "
                 f"survivors: {_get(camel, 'cold', 'survivors')}.")
    lines.append(f"* Streaming (`stream=True`): {_camel_stream(camel)}.")
    lines.append("* In url mode it sends the placeholder key `Set-but-ignored`, not the given "
                 "`api_key`, so the shared stand-in runs without `--api-key` in this bench.")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tp = _get(results, "throughput", "by_concurrency") or {}
    ctp = _get(results, "camel", "throughput", "by_concurrency") or {}
    names = [n for n in ("raw_http", "model_url", "model_url_key", "model_launched",
                         "raw_openai_launched", "sync_pool", "raw_sync_pool") if _get(tp, "1", n)]
    series = [(n, _label(n, results), tp) for n in names]
    if ctp:
        series.append(("camel", "CAMEL SGLangModel.arun (url)", ctp))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    width = 0.8 / max(len(series), 1)
    for ax, key, goal, title in ((axes[0], "rps_ratio", RPS_GOAL, "Throughput ÷ raw AsyncOpenAI"),
                                 (axes[1], "cpu_ratio", CPU_GOAL,
                                  "Client CPU per request ÷ raw AsyncOpenAI")):
        for i, (name, label, data) in enumerate(series):
            xs, meds, lows, highs = [], [], [], []
            for j, conc in enumerate(CONCURRENCIES):
                s = _get(data, conc, name, key)
                if not s or s.get("median") is None:
                    continue
                xs.append(j + (i - (len(series) - 1) / 2) * width)
                meds.append(s["median"])
                lows.append(s["median"] - s["min"])
                highs.append(s["max"] - s["median"])
            ax.bar(xs, meds, width, yerr=[lows, highs], capsize=2, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(goal, color="red", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(CONCURRENCIES)), [f"c={c}" for c in CONCURRENCIES])
        ax.set_title(f"{title}\n(red dashes: goal {'≥' if key == 'rps_ratio' else '≤'} {goal})",
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    meta = results.get("meta", {})
    fig.suptitle(f"sglang_backend vs raw openai {_get(meta, 'versions', 'openai')} — "
                 "median of paired rounds, bars min-max (2 shared cores)", fontsize=10)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
