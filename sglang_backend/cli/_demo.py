"""``sglang-backend demo``: the library's tour on the CPU stand-in server (no GPU, no download).

Startup progress, a streamed reply, structured output, the idle stop and the transparent
relaunch, clean teardown.
"""

from __future__ import annotations

import argparse

from pydantic import BaseModel

from ._args import non_negative, positive
from ._events import Events, print_stream
from ._report import EXIT_OK, say

__all__ = ["DEMO_MODEL", "add_parser", "run"]

DEMO_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    demo = sub.add_parser(
        "demo", parents=[common], allow_abbrev=False,
        help="tour the library on the CPU stand-in server (no GPU)",
        description="Launch the stand-in SGLang server through the library, stream a reply, "
        "parse structured output, watch the idle stop and the transparent relaunch, clean up.",
    )
    demo.add_argument("--model-path", default=DEMO_MODEL,
                      help="model name the stand-in pretends to serve (nothing is downloaded)")
    demo.add_argument("--prompt", default="What does an SGLang server do, in one sentence?")
    demo.add_argument("--idle-timeout", type=positive, default=3.0, metavar="S",
                      help="inactivity timeout shown off by the demo (default 3)")
    demo.add_argument("--load-seconds", type=non_negative, default=2.0, metavar="S",
                      help="simulated weight loading time (default 2)")
    demo.add_argument("--token-delay", type=non_negative, default=0.03, metavar="S",
                      help="seconds per generated token (default 0.03)")


class _City(BaseModel):
    """Structured output target of the demo."""

    name: str
    country: str
    population: int


async def run(args: argparse.Namespace) -> int:
    from .._progress import StartupProgress
    from ..config import ServerConfig
    from ..errors import SGLangError
    from ..model import AsyncSGLangModel
    from ..testing import standin_command

    progress = StartupProgress(label="the stand-in SGLang server")
    events = Events(progress)
    server = ServerConfig(
        launch_command=tuple(standin_command()),
        inactivity_timeout=args.idle_timeout,
        shutdown_timeout=5.0,
        startup_timeout=120.0,
        extra_args=(
            "--standin-load-seconds", f"{args.load_seconds:g}",
            "--standin-token-delay", f"{args.token_delay:g}",
        ),
    )
    say("sglang-backend demo: the library drives the CPU stand-in SGLang server")
    say("(same command line, phases and HTTP API as SGLang; no GPU, nothing downloaded).")
    say()
    say("1. Launch: the server starts in the background; progress comes from on_event.")
    model = AsyncSGLangModel(args.model_path, {"max_tokens": 48}, server=server, on_event=events)
    try:
        await model.start()
        say(f"   ready at {model.base_url} (pid {model.pid}); "
            f"the API key is random and sent on every request.")
        say()
        say("2. Streaming chat:")
        say(f"   you:       {args.prompt}")
        say("   assistant: ", end="")
        stream = await model.run([{"role": "user", "content": args.prompt}], stream=True)
        await print_stream(stream)
        say()
        say("3. Structured output into a pydantic model:")
        reply = await model.run(
            [{"role": "user", "content": "Name a city, its country and population as JSON."}],
            response_format=_City,
            stream=False,
        )
        city = getattr(reply.choices[0].message, "parsed", None)
        say(f"   {city!r}")
        say()
        pid = model.pid
        say(f"4. Idle stop: no request for {args.idle_timeout:g} s, so the watchdog stops "
            "the server …")
        stopped = await events.wait_for("idle_stopped", timeout=args.idle_timeout * 3 + 30)
        if stopped is None:
            raise SGLangError("the server was not idle-stopped in time (demo)")
        say(f"   state={model.state.value}, pid {pid} is gone; the URL stays reserved.")
        say()
        say("5. The next request relaunches it transparently:")
        again = await model.run([{"role": "user", "content": "Hello again!"}], stream=False)
        say(f"   assistant: {again.choices[0].message.content}")
        launches = model.server.launches if model.server is not None else 0
        say(f"   launches={launches}, state={model.state.value}, pid {model.pid}")
        say()
    finally:
        await model.aclose()
        progress.close()
    say(f"6. Closed: state={model.state.value}; every server process is gone.")
    say()
    say("Next: `sglang-backend chat --model-path Qwen/Qwen2.5-0.5B-Instruct \"Hi\"` on a GPU "
        "machine (pip install 'sglang-backend[server]'), or see examples/ and docs/.")
    return EXIT_OK
