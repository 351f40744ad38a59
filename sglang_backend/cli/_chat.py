"""``sglang-backend chat``: one prompt (or, with ``-i``, each stdin line) and its reply on stdout.

Launches SGLang (``python -m sglang.launch_server --model-path M``) unless ``--url`` names a
running server or router.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from ._args import add_launch_options, positive, server_config_from_args
from ._events import Events, print_stream
from ._report import EXIT_OK, UsageError, say

if TYPE_CHECKING:
    from ..model import AsyncSGLangModel

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    chat = sub.add_parser(
        "chat", parents=[common], allow_abbrev=False,
        help="one-shot or interactive chat (launches SGLang unless --url is given)",
        description="Send one prompt (or, with -i, each stdin line) and print the reply. "
        "Without --url, launches `python -m sglang.launch_server --model-path M`.",
    )
    chat.add_argument("prompt", nargs="?", help="the user message (optional with -i)")
    chat.add_argument("--model-path", "--model", dest="model_path", default=None,
                      help="model to launch (or, with --url, to request; default: the "
                      "server's first model)")
    chat.add_argument("--url", default=None, help="use this running server or router")
    chat.add_argument("--api-key", default=os.environ.get("SGLANG_API_KEY"),
                      help="API key (default: $SGLANG_API_KEY; launch mode: random)")
    chat.add_argument("--stream", action="store_true", help="print the reply as it is generated")
    chat.add_argument("-i", "--interactive", action="store_true",
                      help="chat until end of input, one message per stdin line")
    chat.add_argument("--system", default=None, help="a system message")
    chat.add_argument("--max-tokens", type=int, default=None)
    chat.add_argument("--temperature", type=float, default=None)
    chat.add_argument("--timeout", type=positive, default=None, metavar="S",
                      help="per-request timeout (default 180)")
    chat.add_argument("--tool-call-parser", default=None,
                      help="SGLang --tool-call-parser for the launched server")
    chat.add_argument("--reasoning-parser", default=None,
                      help="SGLang --reasoning-parser for the launched server")
    add_launch_options(chat, idle_default=600.0)
    chat.add_argument("--server-arg", action="append", default=[], help=argparse.SUPPRESS)


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Read stdin in a daemon thread (never blocks the loop or interpreter exit)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
        except (OSError, ValueError, RuntimeError):
            pass
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="sglang-backend-stdin", daemon=True).start()
    return queue


async def _first_model(url: str, api_key: str | None) -> str:
    from .. import _http
    from ..errors import AuthenticationError, RequestError, ServerUnavailableError

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with _http.new_async_client() as client:
        try:
            response = await client.get(f"{url.rstrip('/')}/v1/models", headers=headers,
                                        timeout=10.0)
        except _http.httpx.TransportError as exc:
            raise ServerUnavailableError(
                f"could not reach {url}: {type(exc).__name__}: {exc}"
            ) from exc
    if response.status_code in (401, 403):
        raise AuthenticationError(f"{url}/v1/models answered {response.status_code}: "
                                  "the API key was refused", status_code=response.status_code)
    try:
        data = response.json()["data"]
        return str(data[0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise RequestError(f"{url}/v1/models lists no model (status {response.status_code}); "
                           "pass --model-path", status_code=response.status_code) from None


async def run(args: argparse.Namespace) -> int:
    if not args.interactive and not args.prompt:
        raise UsageError("give a prompt, or -i to read messages from stdin")
    from .._progress import StartupProgress
    from ..model import AsyncSGLangModel

    sampling: dict[str, Any] = {}
    if args.max_tokens is not None:
        sampling["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        sampling["temperature"] = args.temperature
    progress = StartupProgress(label=args.model_path or "the server")
    events = Events(progress)
    if args.url is not None:
        launch_only = [name for name in ("tool_call_parser", "reasoning_parser", "launch_command")
                       if getattr(args, name) is not None]
        if launch_only or args.server_arg:
            flags = ", ".join("--" + n.replace("_", "-") for n in launch_only) or "--server-arg"
            raise UsageError(f"{flags} only apply when launching a server (without --url)")
        model_name = args.model_path or await _first_model(args.url, args.api_key)
        model = AsyncSGLangModel(model_name, sampling, api_key=args.api_key, url=args.url,
                                 timeout=args.timeout, on_event=events)
    else:
        if not args.model_path:
            raise UsageError("--model-path is required to launch a server (or pass --url)")
        config = server_config_from_args(args, args.server_arg)
        model = AsyncSGLangModel(args.model_path, sampling, api_key=args.api_key,
                                 timeout=args.timeout, server=config, on_event=events)
    history: list[dict[str, Any]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    try:
        if not args.interactive:
            history.append({"role": "user", "content": args.prompt})
            await _reply(model, history, stream=args.stream)
            return EXIT_OK
        await model.start()
        tty = sys.stdin.isatty()
        queue = _stdin_lines(asyncio.get_running_loop())
        pending = [args.prompt] if args.prompt else []
        while True:
            if pending:
                line: str | None = pending.pop()
            else:
                if tty:
                    say("you> ", end="", file=sys.stderr)
                line = await queue.get()
            if line is None:
                return EXIT_OK
            text = line.strip()
            if not text:
                continue
            history.append({"role": "user", "content": text})
            answer = await _reply(model, history, stream=args.stream)
            history.append({"role": "assistant", "content": answer})
    finally:
        await model.aclose()
        progress.close()


async def _reply(model: AsyncSGLangModel, history: list[dict[str, Any]], *, stream: bool) -> str:
    if stream:
        return await print_stream(await model.run(history, stream=True))
    completion = await model.run(history, stream=False)
    text = completion.choices[0].message.content or ""
    say(text)
    return text
