"""``sglang-backend serve --pool FILE``: a pool of models behind an OpenAI-compatible front.

Reads the pool file (docs/pool.md), starts the front on loopback with an API key, prints one
line per pool event (loading, loaded, evicted, with durations) and each member's startup
phases, and on Ctrl-C / SIGTERM stops the front, then every member's server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._report import EXIT_OK, UsageError

if TYPE_CHECKING:
    from ..server import ServerEvent

__all__ = ["PoolEventPrinter", "serve_pool"]


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class PoolEventPrinter:
    """``on_event`` for a terminal: one line per pool event and per member startup phase."""

    def __call__(self, event: ServerEvent) -> None:
        d = event.detail
        name = d.get("model", "?")
        kind = event.kind
        if kind == "loading":
            _say(f"loading {name} on GPU(s) {d.get('gpus')} (waited {d.get('waited', 0):.1f} s) …")
        elif kind == "phase":
            _say(f"  {name}: {d.get('phase')} ({d.get('elapsed', 0):.1f} s)")
        elif kind == "loaded":
            _say(f"loaded {name} in {d.get('duration', 0):.1f} s (pid {event.pid})")
        elif kind == "load_failed":
            _say(f"could not load {name}: {d.get('error')}")
        elif kind == "evicted":
            _say(f"evicted {name} ({d.get('reason')}, for {d.get('for_model')}) "
                 f"in {d.get('duration', 0):.1f} s")
        elif kind == "unloaded":
            _say(f"{name} stopped on its own ({d.get('reason')})")


async def serve_pool(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run the front until Ctrl-C / SIGTERM; the exit code."""
    from .._pool_file import load_pool_file
    from .._stop_signals import StopSignals
    from ..errors import ConfigError
    from ..front import PoolFront

    if extra:
        raise UsageError(f"--pool takes its SGLang flags from the pool file, not the command "
                         f"line: {' '.join(extra)}")
    spec = await asyncio.to_thread(load_pool_file, args.pool)  # file I/O off the loop
    front_opts = spec.front
    host = args.host if args.host != "127.0.0.1" else front_opts.get("host", "127.0.0.1")
    port = args.port if args.port is not None else int(front_opts.get("port", 0))
    key = args.api_key
    if not key and front_opts.get("api_key_env"):
        key = os.environ.get(front_opts["api_key_env"])
        if not key:
            raise ConfigError(f"{spec.path}: [front] api_key_env names "
                              f"${front_opts['api_key_env']}, which is not set")
    pool = spec.build(on_event=PoolEventPrinter())
    front = PoolFront(pool, host=host, port=port, api_key=key)
    signals = StopSignals()
    signals.install()
    try:
        await front.start()
        print(f"Model pool front ({len(pool.names)} models, from {spec.path}) is ready.")
        print(f"  URL:      {front.url}")
        print(f"  OpenAI:   {front.url}/v1")
        print("  API key:  " + (front.api_key if key is None else "(the one you gave)"))
        for member in pool.describe():
            extra_info = ", ".join(x for x in (
                "pinned" if member["pinned"] else "",
                f"group {member['group']}" if member["group"] else "",
                f"aliases {', '.join(member['aliases'])}" if member["aliases"] else "") if x)
            print(f"  model:    {member['name']}" + (f" ({extra_info})" if extra_info else ""))
        policy = pool.max_loaded if pool.max_loaded is not None else "no limit"
        print(f"  Policy:   max_loaded={policy}; models load on first request. "
              "Ctrl-C or SIGTERM stops every model.", flush=True)
        await front.serve_until(signals.stop)
        if signals.received:
            _say(f"Received {signals.received[0]}: stopping the pool …")
        return EXIT_OK
    finally:
        await front.aclose()
        signals.remove()
