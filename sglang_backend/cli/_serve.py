"""``sglang-backend serve``: launch and supervise one server until Ctrl-C / SIGTERM or its idle stop.

Prints the URL, OpenAI base URL and API key. Typed flags map to ServerConfig fields, every
other flag goes to SGLang unchanged. With an idle timeout the server is launched with
``ServerConfig.keep_alive_on_traffic``: requests from other clients (the reason to serve)
count as activity, and the library's watchdog, not this command, watches for them.
``--pool FILE`` serves a pool of models instead (:mod:`._serve_pool`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from ._args import SERVE_TYPED, add_launch_options, server_config_from_args
from ._events import Events
from ._report import EXIT_OK, PROG, say

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    serve = sub.add_parser(
        "serve", parents=[common], allow_abbrev=False,
        help="launch and supervise a server until Ctrl-C / SIGTERM",
        description="Launch SGLang, print its URL and API key, supervise it (idle stop, "
        "orphan-proof) and stop it cleanly on Ctrl-C or SIGTERM. Unknown flags are passed "
        "to SGLang unchanged.",
        usage=f"{PROG} serve --model-path M [options] [SGLang flags ...]",
    )
    what = serve.add_mutually_exclusive_group(required=True)
    what.add_argument("--model-path", "--model", dest="model_path")
    what.add_argument("--pool", metavar="FILE", help="serve a pool of models (docs/pool.md)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="HTTP port (default: a free one)")
    serve.add_argument("--api-key", default=os.environ.get("SGLANG_API_KEY"),
                       help="API key (default: $SGLANG_API_KEY, else a random one)")
    typed = serve.add_argument_group("typed SGLang options (mapped to ServerConfig)")
    for flags, field, kind in SERVE_TYPED:
        typed.add_argument(*flags, dest=field, type=kind, default=None)
    add_launch_options(serve, idle_default=600.0)


async def run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if args.pool:
        from ._serve_pool import serve_pool

        return await serve_pool(args, extra)
    from .._progress import StartupProgress
    from .._stop_signals import StopSignals
    from ..errors import ServerCrashedError
    from ..model import AsyncSGLangModel

    # Other clients' requests are what a served model is for: they keep it alive.
    config = server_config_from_args(args, extra,
                                     keep_alive_on_traffic=args.idle_timeout is not None)
    progress = StartupProgress(label=args.model_path)
    progress.relaunch_note = False
    events = Events(progress)
    model = AsyncSGLangModel(args.model_path, api_key=args.api_key, server=config,
                             on_event=events)
    signals = StopSignals()
    signals.install()
    try:
        await model.start()
        say(f"SGLang server for {args.model_path} is ready.")
        say(f"  URL:      {model.base_url}")
        say(f"  OpenAI:   {model.base_url}/v1")
        say(f"  API key:  {model.api_key}")
        say(f"  pid:      {model.pid}")
        idle = (f"stops after {args.idle_timeout:g} s without requests"
                if args.idle_timeout is not None else "never stopped for inactivity")
        say(f"  Idle:     {idle}. Ctrl-C or SIGTERM stops it.")
        waiter = asyncio.ensure_future(signals.stop.wait())
        ended = asyncio.ensure_future(events.wait_for("idle_stopped", "crashed",
                                                      timeout=float("inf")))
        try:
            await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            ended.cancel()
        if signals.received:
            say(f"Received {signals.received[0]}: stopping the server …", file=sys.stderr)
            return EXIT_OK
        event = ended.result() if ended.done() and not ended.cancelled() else None
        if event is not None and event.kind == "crashed":
            server = model.server  # launch mode: the supervisor records why it failed
            if server is not None and server.error is not None:
                raise server.error
            raise ServerCrashedError("the server crashed")
        say(f"Stopped after {args.idle_timeout:g} s without requests (--idle-timeout).",
            file=sys.stderr)
        return EXIT_OK
    finally:
        await model.aclose()
        progress.close()
        signals.remove()
