"""Metric 4: throughput and client CPU per request at several concurrencies.

Variants (all against one stand-in server, except launched mode, which runs its own):

* ``raw_http``       the SDK's HTTP stack (httpx2 or httpx) POSTing JSON, parsing JSON
* ``raw_openai``     ``openai.AsyncOpenAI`` — the baseline every ratio is taken against
* ``model_url``      ``AsyncSGLangModel(url=...)`` without an api_key (a local keyless server)
* ``model_url_key``  the same with ``api_key=...`` (the server accepts any key)
* ``model_launched`` ``AsyncSGLangModel(server=ServerConfig(...))`` on its own stand-in
* ``raw_openai_launched`` control: AsyncOpenAI against the launched stand-in (same process
  drains that server's log), to tell a launched-mode cost from a client cost
* ``sync_pool``      ``SGLangModel(url=..., api_key=...)`` called from a thread pool of
  ``concurrency`` threads
* ``raw_sync_pool``  control: the blocking ``openai.OpenAI`` from the same kind of pool

Rounds are interleaved (variant order alternates each round) and every ratio is paired: a
variant's figure divided by the baseline's in the same round; the median of those is reported.

Standalone (used for the second SDK generation): ``python bench/throughput.py --url URL``
prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import common

BASELINE = "raw_openai"
ALL = ["raw_http", "raw_openai", "model_url", "model_url_key", "model_launched",
       "raw_openai_launched", "sync_pool", "raw_sync_pool"]
# Variants also compared with a control of their own kind (paired by round).
CONTROLS = {"sync_pool": "raw_sync_pool"}
STANDALONE = ["raw_http", "raw_openai", "model_url", "model_url_key", "sync_pool",
              "raw_sync_pool"]

LABELS = {
    "raw_http": "raw {stack} POST",
    "raw_openai": "raw openai.AsyncOpenAI",
    "model_url": "AsyncSGLangModel (url, no api_key)",
    "model_url_key": "AsyncSGLangModel (url, api_key)",
    "model_launched": "AsyncSGLangModel (launched)",
    "raw_openai_launched": "raw AsyncOpenAI → launched server (control)",
    "sync_pool": "SGLangModel (url, api_key) in thread pool",
    "raw_sync_pool": "raw openai.OpenAI in thread pool (control)",
}


async def _drive(call: Callable[[], Awaitable[Any]], conc: int, n: int) -> None:
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            await call()

    await asyncio.gather(*(worker() for _ in range(min(conc, n))))


class Variant:
    name = ""

    async def open(self) -> None:
        raise NotImplementedError

    async def run(self, conc: int, n: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class RawHttp(Variant):
    name = "raw_http"

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url, self.api_key = url, api_key

    async def open(self) -> None:
        import openai

        from sglang_backend import _http

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.client = _http.httpx.AsyncClient(
            limits=openai.DEFAULT_CONNECTION_LIMITS, timeout=60.0, headers=headers
        )
        self.body = {"model": common.MODEL, "messages": common.MESSAGES,
                     "max_tokens": common.MAX_TOKENS}

    async def _one(self) -> None:
        response = await self.client.post(f"{self.url}/v1/chat/completions", json=self.body)
        response.raise_for_status()
        response.json()

    async def run(self, conc: int, n: int) -> None:
        await _drive(self._one, conc, n)

    async def close(self) -> None:
        await self.client.aclose()


class RawOpenAI(Variant):
    name = "raw_openai"

    def __init__(self, url: str | Callable[[], str], api_key: str | Callable[[], str | None] | None,
                 name: str = "raw_openai") -> None:
        self._url, self._key, self.name = url, api_key, name

    async def open(self) -> None:
        import openai

        url = self._url() if callable(self._url) else self._url
        key = self._key() if callable(self._key) else self._key
        self.client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key or "none")

    async def _one(self) -> None:
        await self.client.chat.completions.create(
            model=common.MODEL, messages=common.MESSAGES,  # type: ignore[arg-type]
            max_tokens=common.MAX_TOKENS,
        )

    async def run(self, conc: int, n: int) -> None:
        await _drive(self._one, conc, n)

    async def close(self) -> None:
        await self.client.close()


class ModelVariant(Variant):
    def __init__(self, url: str | None, api_key: str | None, name: str) -> None:
        self.url, self.api_key, self.name = url, api_key, name

    async def open(self) -> None:
        from sglang_backend import AsyncSGLangModel, ServerConfig
        from sglang_backend.testing import standin_command

        config = {"max_tokens": common.MAX_TOKENS}
        if self.url:
            self.model = AsyncSGLangModel(common.MODEL, config, api_key=self.api_key, url=self.url)
        else:
            self.model = AsyncSGLangModel(
                common.MODEL, config,
                server=ServerConfig(launch_command=standin_command(), inactivity_timeout=None),
            )
        await self.model.start()

    def base_url(self) -> str:
        url = self.model.base_url
        assert url is not None
        return url

    def key(self) -> str | None:
        return self.model.api_key

    async def _one(self) -> None:
        await self.model.run(common.MESSAGES, stream=False)

    async def run(self, conc: int, n: int) -> None:
        await _drive(self._one, conc, n)

    async def close(self) -> None:
        await self.model.aclose()


class SyncPool(Variant):
    name = "sync_pool"

    def __init__(self, url: str, api_key: str | None, raw: bool = False) -> None:
        self.url, self.api_key, self.raw = url, api_key, raw
        self.pools: dict[int, ThreadPoolExecutor] = {}
        if raw:
            self.name = "raw_sync_pool"

    async def open(self) -> None:
        import openai

        from sglang_backend import SGLangModel

        if self.raw:
            self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key)
            return
        self.model = SGLangModel(common.MODEL, {"max_tokens": common.MAX_TOKENS},
                                 api_key=self.api_key, url=self.url)
        await asyncio.to_thread(self.model.start)

    def _one(self) -> None:
        if self.raw:
            self.client.chat.completions.create(
                model=common.MODEL, messages=common.MESSAGES,  # type: ignore[arg-type]
                max_tokens=common.MAX_TOKENS)
        else:
            self.model.run(common.MESSAGES, stream=False)

    def _blocking(self, conc: int, n: int) -> None:
        pool = self.pools.get(conc)
        if pool is None:
            pool = self.pools[conc] = ThreadPoolExecutor(conc, thread_name_prefix="bench-sync")
        for future in [pool.submit(self._one) for _ in range(n)]:
            future.result()

    async def run(self, conc: int, n: int) -> None:
        await asyncio.to_thread(self._blocking, conc, n)

    async def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=True)
        if self.raw:
            self.client.close()
        else:
            await asyncio.to_thread(self.model.close)


def build(names: list[str], url: str, api_key: str | None) -> list[Variant]:
    variants: list[Variant] = []
    launched: ModelVariant | None = None
    for name in names:
        if name == "raw_http":
            variants.append(RawHttp(url, api_key))
        elif name == "raw_openai":
            variants.append(RawOpenAI(url, api_key))
        elif name == "model_url":
            variants.append(ModelVariant(url, api_key, name))
        elif name == "model_url_key":
            variants.append(ModelVariant(url, api_key or "bench-key", name))
        elif name == "model_launched":
            launched = ModelVariant(None, None, name)
            variants.append(launched)
        elif name == "raw_openai_launched":
            assert launched is not None, "raw_openai_launched needs model_launched before it"
            variants.append(RawOpenAI(launched.base_url, launched.key, name=name))
        elif name == "sync_pool":
            variants.append(SyncPool(url, api_key or "bench-key"))
        elif name == "raw_sync_pool":
            variants.append(SyncPool(url, api_key or "bench-key", raw=True))
        else:
            raise ValueError(name)
    return variants


def plan(quick: bool) -> tuple[dict[int, int], int]:
    """Requests per timed run at each concurrency, and rounds."""
    if quick:
        return {1: 60, 32: 320, 256: 512}, 2
    return {1: 200, 32: 1000, 256: 1536}, 5


async def measure(url: str, api_key: str | None, names: list[str], quick: bool,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    requests, rounds = plan(quick)
    variants = build(names, url, api_key)
    opened: list[Variant] = []
    raw: dict[int, dict[str, dict[str, list[float]]]] = {
        c: {v.name: {"rps": [], "cpu_us": []} for v in variants} for c in requests
    }
    try:
        for variant in variants:
            await variant.open()
            opened.append(variant)
        for conc, n in requests.items():
            for r in range(rounds):
                order = variants if r % 2 == 0 else variants[::-1]
                for variant in order:
                    await variant.run(conc, min(n, max(conc * 2, 20)))  # warm the pool
                    gc.collect()
                    t0, c0 = time.perf_counter(), time.process_time()
                    await variant.run(conc, n)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    raw[conc][variant.name]["rps"].append(n / wall)
                    raw[conc][variant.name]["cpu_us"].append(cpu / n * 1e6)
                log(f"  throughput c={conc} round {r + 1}/{rounds}: " + ", ".join(
                    f"{v.name}={raw[conc][v.name]['rps'][-1]:.0f}/s "
                    f"{raw[conc][v.name]['cpu_us'][-1]:.0f}µs" for v in variants))
    finally:
        for variant in reversed(opened):
            with contextlib.suppress(Exception):
                await variant.close()
    return {"requests": {str(c): n for c, n in requests.items()}, "rounds": rounds,
            "baseline": BASELINE, "by_concurrency": _summarize(raw)}


def _summarize(raw: dict[int, dict[str, dict[str, list[float]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for conc, per in raw.items():
        base = per.get(BASELINE)
        row: dict[str, Any] = {}
        for name, series in per.items():
            entry: dict[str, Any] = {
                "rps": common.summary(series["rps"], 1),
                "cpu_us_per_request": common.summary(series["cpu_us"], 1),
            }
            if base is not None:
                entry["rps_ratio"] = common.summary(
                    [a / b for a, b in zip(series["rps"], base["rps"], strict=True)], 3)
                entry["cpu_ratio"] = common.summary(
                    [a / b for a, b in zip(series["cpu_us"], base["cpu_us"], strict=True)], 3)
            control = per.get(CONTROLS.get(name, ""))
            if control is not None:  # the facade against the blocking SDK, paired by round
                entry["vs_control"] = CONTROLS[name]
                entry["rps_vs_control"] = common.summary(
                    [a / b for a, b in zip(series["rps"], control["rps"], strict=True)], 3)
                entry["cpu_vs_control"] = common.summary(
                    [a / b for a, b in zip(series["cpu_us"], control["cpu_us"], strict=True)], 3)
            row[name] = entry
        out[str(conc)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variants", default=",".join(STANDALONE))
    args = parser.parse_args()
    import sys

    result = asyncio.run(measure(args.url, args.api_key, args.variants.split(","), args.quick,
                                 log=lambda s: print(s, file=sys.stderr)))
    result["versions"] = common.versions()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
