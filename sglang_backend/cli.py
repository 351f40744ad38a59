"""The ``sglang-backend`` command: ``demo``, ``chat``, ``serve`` and ``status``.

* ``sglang-backend demo`` runs the library against the CPU stand-in server (no GPU, nothing
  downloaded): startup progress, a streamed reply, structured output, the idle stop and the
  transparent relaunch, clean teardown.
* ``sglang-backend chat --model-path M "prompt"`` is a one-shot chat (``-i`` for a loop over
  stdin lines), launching SGLang or connecting to ``--url``.
* ``sglang-backend serve --model-path M [SGLang flags…]`` launches and supervises a server,
  prints its URL and API key and stops it cleanly on Ctrl-C / SIGTERM.
* ``sglang-backend status --url U`` reports health, model, version and served models.

Startup progress goes to stderr (stdout carries replies only). Failures are reported as one
readable paragraph — what failed, the server's last log lines, what to try — unless
``--debug`` asks for the traceback. Exit codes: 0 ok, 1 runtime failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TextIO

from pydantic import BaseModel

from . import __version__, _http
from ._progress import StartupProgress
from ._stop_signals import StopSignals
from .config import ServerConfig
from .errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    InvalidRequestError,
    LaunchCommandNotFoundError,
    PortInUseError,
    RequestError,
    RequestTimeoutError,
    ServerCrashedError,
    ServerError,
    ServerHungError,
    ServerStartError,
    ServerStartTimeout,
    ServerUnavailableError,
    SGLangError,
    SGLangNotInstalledError,
    StructuredOutputError,
)
from .model import AsyncSGLangModel, ChatStream
from .server import ServerEvent, ServerState

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "format_error", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

PROG = "sglang-backend"
DEMO_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
_TAIL_LINES = 12
_TAIL_WIDTH = 240

# Typed SGLang flags of `serve`: flag (and aliases) -> ServerConfig field, value type.
_SERVE_TYPED: tuple[tuple[tuple[str, ...], str, Callable[[str], Any]], ...] = (
    (("--tp-size", "--tensor-parallel-size"), "tp_size", int),
    (("--dp-size", "--data-parallel-size"), "dp_size", int),
    (("--base-gpu-id",), "base_gpu_id", int),
    (("--nnodes",), "nnodes", int),
    (("--node-rank",), "node_rank", int),
    (("--dist-init-addr",), "dist_init_addr", str),
    (("--mem-fraction-static",), "mem_fraction_static", float),
    (("--context-length",), "context_length", int),
    (("--served-model-name",), "served_model_name", str),
    (("--chat-template",), "chat_template", str),
    (("--tool-call-parser",), "tool_call_parser", str),
    (("--reasoning-parser",), "reasoning_parser", str),
)


class UsageError(Exception):
    """A command-line mistake found after parsing (exit code 2)."""


# --------------------------------------------------------------------------------- errors


def _tail(lines: Sequence[str]) -> list[str]:
    shown = [line for line in lines if line.strip()][-_TAIL_LINES:]
    out = []
    for raw in shown:
        line = raw.rstrip()
        if len(line) > _TAIL_WIDTH:
            line = line[: _TAIL_WIDTH - 1] + "…"
        out.append(f"  | {line}")
    return out or ["  | (the server wrote no output)"]


def _hint(exc: BaseException) -> str:
    if isinstance(exc, LaunchCommandNotFoundError):
        return (
            "Is SGLang installed in this environment? Install it with "
            "pip install 'sglang-backend[server]' (needs a GPU), pass --url to use a running "
            "server, or try `sglang-backend demo` (no GPU needed)."
        )
    if isinstance(exc, PortInUseError):
        return "Choose another --port, or leave it out to pick a free one."
    if isinstance(exc, SGLangNotInstalledError):
        return (
            "SGLang is not installed in this Python: install it with "
            "pip install 'sglang-backend[server]' (needs a GPU), pass --url to use a running "
            "server, or try `sglang-backend demo` (no GPU needed)."
        )
    if isinstance(exc, ServerStartTimeout):
        return (
            "Loading may just be slow (large models take many minutes): raise "
            "--startup-timeout, and check the log lines above for a stall."
        )
    if isinstance(exc, ServerStartError) and exc.hint:  # classified: its own hint
        return exc.hint
    if isinstance(exc, ServerStartError):
        return (
            "The log lines above say why the server exited: check --model-path (a local "
            "directory or a Hugging Face id), GPU memory (--mem-fraction-static) and the flags."
        )
    if isinstance(exc, ServerHungError):
        return exc.hint
    if isinstance(exc, ServerCrashedError):
        return "The log lines above say why; the next request would relaunch the server."
    if isinstance(exc, ServerUnavailableError):
        return "Check --url and that the server is running (`sglang-backend status --url U`)."
    if isinstance(exc, AuthenticationError):
        return "Check --api-key (or $SGLANG_API_KEY): it must match the server's --api-key."
    if isinstance(exc, RequestTimeoutError):
        return "Raise --timeout, or ask for fewer tokens (--max-tokens)."
    if isinstance(exc, StructuredOutputError):
        return "Raise --max-tokens or simplify the schema."
    if isinstance(exc, BadRequestError):
        return "The server's message above says what it rejected."
    return ""


def format_error(exc: BaseException, *, what: str = "") -> str:
    """One readable paragraph for ``exc``: what failed, the server's last lines, what to try."""
    head = f"{PROG}: error: " + (f"{what}: " if what else "")
    lines: list[str]
    if isinstance(exc, ServerError):
        lines = [head + exc.summary.rstrip(".") + "."]
        if exc.command:
            lines.append("  command: " + " ".join(shlex.quote(a) for a in exc.command))
        expects_output = isinstance(exc, (ServerStartError, ServerCrashedError)) and not (
            isinstance(exc, (LaunchCommandNotFoundError, PortInUseError))
        )
        if isinstance(exc, ServerStartError) and not exc.command:
            expects_output = False  # found before launch: there is no server output
        if exc.log_tail or expects_output:
            lines.append("  last server output:")
            lines.extend(_tail(exc.log_tail))
        if isinstance(exc, ServerStartError) and exc.evidence:
            lines.append("  evidence: " + exc.evidence)
    elif isinstance(exc, SGLangError):
        lines = [head + " ".join(str(exc).split("\n")[0].split())]
    else:
        lines = [head + f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"]
    hint = _hint(exc)
    lines.append(("  Try: " + hint + " " if hint else "  ") + "Run with --debug for the traceback.")
    return "\n".join(lines)


def _report(exc: BaseException, debug: bool, what: str = "") -> int:
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.write(format_error(exc, what=what) + "\n")
    sys.stderr.flush()
    return EXIT_USAGE if isinstance(exc, (ConfigError, InvalidRequestError, UsageError)) else (
        EXIT_FAILURE
    )


# --------------------------------------------------------------------------------- parser


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and the library's debug log (including the server's output)",
    )
    return common


def _number(text: str, what: str = "a number") -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _seconds_or_none(text: str) -> float | None:
    if text.strip().lower() in ("0", "none", "never", "off"):
        return None
    value = _number(text, "seconds or 'none'")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _add_launch_options(parser: argparse.ArgumentParser, *, idle_default: float | None) -> None:
    group = parser.add_argument_group("server supervision (launch mode)")
    group.add_argument("--startup-timeout", type=_positive, default=None, metavar="S",
                       help="seconds allowed for launch + load + warm-up (default 1800)")
    group.add_argument("--idle-timeout", type=_seconds_or_none, default=idle_default,
                       metavar="S", help="stop the server after S idle seconds; 'none' never "
                       f"(default {idle_default if idle_default is not None else 'none'})")
    group.add_argument("--shutdown-timeout", type=_non_negative, default=None, metavar="S",
                       help="grace after SIGTERM before the tree is SIGKILLed (default 10)")
    # Advanced/hidden: the argv prefix that starts the server (tests point it at the stand-in).
    group.add_argument("--launch-command", default=None, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``sglang-backend`` (subcommands demo, chat, serve, status)."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Launch, supervise and talk to SGLang servers. "
        "Start with `sglang-backend demo` (no GPU needed).",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo", parents=[common], allow_abbrev=False,
        help="tour the library on the CPU stand-in server (no GPU)",
        description="Launch the stand-in SGLang server through the library, stream a reply, "
        "parse structured output, watch the idle stop and the transparent relaunch, clean up.",
    )
    demo.add_argument("--model-path", default=DEMO_MODEL,
                      help="model name the stand-in pretends to serve (nothing is downloaded)")
    demo.add_argument("--prompt", default="What does an SGLang server do, in one sentence?")
    demo.add_argument("--idle-timeout", type=_positive, default=3.0, metavar="S",
                      help="inactivity timeout shown off by the demo (default 3)")
    demo.add_argument("--load-seconds", type=_non_negative, default=2.0, metavar="S",
                      help="simulated weight loading time (default 2)")
    demo.add_argument("--token-delay", type=_non_negative, default=0.03, metavar="S",
                      help="seconds per generated token (default 0.03)")

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
    chat.add_argument("--timeout", type=_positive, default=None, metavar="S",
                      help="per-request timeout (default 180)")
    chat.add_argument("--tool-call-parser", default=None,
                      help="SGLang --tool-call-parser for the launched server")
    chat.add_argument("--reasoning-parser", default=None,
                      help="SGLang --reasoning-parser for the launched server")
    _add_launch_options(chat, idle_default=600.0)
    chat.add_argument("--server-arg", action="append", default=[], help=argparse.SUPPRESS)

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
    for flags, field, kind in _SERVE_TYPED:
        typed.add_argument(*flags, dest=field, type=kind, default=None)
    _add_launch_options(serve, idle_default=600.0)

    status = sub.add_parser(
        "status", parents=[common], allow_abbrev=False,
        help="health, model, version and models of a running server",
    )
    status.add_argument("--url", required=True)
    status.add_argument("--api-key", default=os.environ.get("SGLANG_API_KEY"),
                        help="API key (default: $SGLANG_API_KEY)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--timeout", type=_positive, default=10.0, metavar="S")
    return parser


# -------------------------------------------------------------------------------- helpers


def _launch_command(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    # Split like a shell would tokenize, but nothing is ever run through a shell.
    argv = tuple(shlex.split(text))
    if not argv:
        raise UsageError("--launch-command must not be empty")
    return argv


def server_config_from_args(args: argparse.Namespace, extra: Sequence[str] = ()) -> ServerConfig:
    """The ServerConfig a ``chat`` or ``serve`` command line asks for (ConfigError if bad)."""
    options: dict[str, Any] = {
        "launch_command": _launch_command(args.launch_command),
        "inactivity_timeout": args.idle_timeout,
        "extra_args": tuple(extra),
    }
    for name in ("startup_timeout", "shutdown_timeout", "host", "port"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    for _, field, _ in _SERVE_TYPED:
        value = getattr(args, field, None)
        if value is not None:
            options[field] = value
    return ServerConfig(**options)


def _print(text: str = "", *, end: str = "\n", file: TextIO | None = None) -> None:
    stream = file if file is not None else sys.stdout
    stream.write(text + end)
    stream.flush()


def _setup_logging(debug: bool) -> None:
    if debug:
        logging.basicConfig(
            level=logging.DEBUG, stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        for noisy in ("httpcore", "httpx", "httpx2", "openai", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.INFO)
    else:
        # The CLI reports failures itself; the library's own log stays quiet.
        logging.getLogger("sglang_backend").setLevel(logging.CRITICAL)


class _Events:
    """Fans ServerEvents out to the progress display and records the ones a command awaits."""

    def __init__(self, progress: StartupProgress) -> None:
        self.progress = progress
        self.seen: list[ServerEvent] = []
        self.changed = asyncio.Event()

    def __call__(self, event: ServerEvent) -> None:
        self.seen.append(event)
        self.progress(event)
        self.changed.set()

    def kinds(self) -> list[str]:
        return [event.kind for event in self.seen]

    async def wait_for(self, *kinds: str, timeout: float) -> ServerEvent | None:
        """Wait for the next event of one of ``kinds`` (None on timeout)."""
        start = len(self.seen)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in self.seen[start:]:
                if event.kind in kinds:
                    return event
            start = len(self.seen)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(
                    self.changed.wait(), None if remaining == float("inf") else remaining
                )
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return None


async def _print_stream(stream: ChatStream) -> str:
    """Write a streamed reply to stdout as it arrives; return the text."""
    parts: list[str] = []
    async with stream:
        async for chunk in stream:
            for choice in chunk.choices:
                piece = choice.delta.content or ""
                if piece:
                    parts.append(piece)
                    _print(piece, end="")
    _print()
    return "".join(parts)


# ------------------------------------------------------------------------------------ demo


class _City(BaseModel):
    """Structured output target of the demo."""

    name: str
    country: str
    population: int


async def _demo(args: argparse.Namespace) -> int:
    from .testing import standin_command

    progress = StartupProgress(label="the stand-in SGLang server")
    events = _Events(progress)
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
    _print("sglang-backend demo: the library drives the CPU stand-in SGLang server")
    _print("(same command line, phases and HTTP API as SGLang; no GPU, nothing downloaded).")
    _print()
    _print("1. Launch: the server starts in the background; progress comes from on_event.")
    model = AsyncSGLangModel(args.model_path, {"max_tokens": 48}, server=server, on_event=events)
    try:
        await model.start()
        _print(f"   ready at {model.base_url} (pid {model.pid}); "
               f"the API key is random and sent on every request.")
        _print()
        _print("2. Streaming chat:")
        _print(f"   you:       {args.prompt}")
        _print("   assistant: ", end="")
        stream = await model.run([{"role": "user", "content": args.prompt}], stream=True)
        await _print_stream(stream)
        _print()
        _print("3. Structured output into a pydantic model:")
        reply = await model.run(
            [{"role": "user", "content": "Name a city, its country and population as JSON."}],
            response_format=_City,
            stream=False,
        )
        city = getattr(reply.choices[0].message, "parsed", None)
        _print(f"   {city!r}")
        _print()
        pid = model.pid
        _print(f"4. Idle stop: no request for {args.idle_timeout:g} s, so the watchdog stops "
               "the server …")
        stopped = await events.wait_for("idle_stopped", timeout=args.idle_timeout * 3 + 30)
        if stopped is None:
            raise SGLangError("the server was not idle-stopped in time (demo)")
        _print(f"   state={model.state.value}, pid {pid} is gone; the URL stays reserved.")
        _print()
        _print("5. The next request relaunches it transparently:")
        again = await model.run([{"role": "user", "content": "Hello again!"}], stream=False)
        _print(f"   assistant: {again.choices[0].message.content}")
        launches = model.server.launches if model.server is not None else 0
        _print(f"   launches={launches}, state={model.state.value}, pid {model.pid}")
        _print()
    finally:
        await model.aclose()
        progress.close()
    _print(f"6. Closed: state={model.state.value}; every server process is gone.")
    _print()
    _print("Next: `sglang-backend chat --model-path Qwen/Qwen2.5-0.5B-Instruct \"Hi\"` on a GPU "
           "machine (pip install 'sglang-backend[server]'), or see examples/ and docs/.")
    return EXIT_OK


# ------------------------------------------------------------------------------------ chat


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


async def _chat(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if extra:
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
    if not args.interactive and not args.prompt:
        raise UsageError("give a prompt, or -i to read messages from stdin")
    sampling: dict[str, Any] = {}
    if args.max_tokens is not None:
        sampling["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        sampling["temperature"] = args.temperature
    progress = StartupProgress(label=args.model_path or "the server")
    events = _Events(progress)
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
                    _print("you> ", end="", file=sys.stderr)
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
        return await _print_stream(await model.run(history, stream=True))
    completion = await model.run(history, stream=False)
    text = completion.choices[0].message.content or ""
    _print(text)
    return text


# ----------------------------------------------------------------------------------- serve

_METRIC = re.compile(r"^(sglang:num_requests_total|sglang:num_running_reqs)\{?[^}\s]*\}?\s+(\S+)")


async def _read_activity(client: Any, url: str) -> tuple[float, float] | None:
    """(requests served so far, requests running) from ``/metrics``; None if unavailable."""
    try:
        response = await client.get(f"{url}/metrics", timeout=5.0)
    except _http.httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    total = running = 0.0
    for line in response.text.splitlines():
        match = _METRIC.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(2))
        except ValueError:
            continue
        if match.group(1) == "sglang:num_requests_total":
            total += value
        else:
            running += value
    return total, running


async def _keep_alive_on_traffic(model: AsyncSGLangModel, period: float) -> None:
    """Requests from other clients bypass the library's watchdog: watch the server's
    ``/metrics`` and, while it is serving, ``touch()`` the model so the inactivity timer
    counts that traffic as activity."""
    last: float | None = None
    async with _http.new_async_client() as client:
        while True:
            await asyncio.sleep(period)
            url = model.base_url
            if model.state is not ServerState.READY or not url:
                last = None
                continue
            activity = await _read_activity(client, url)
            if activity is None:
                continue
            total, running = activity
            busy = running > 0 or (last is not None and total != last)
            last = total
            if busy:
                model.touch()


async def _serve(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if args.pool:
        from ._cli_pool import serve_pool
        return await serve_pool(args, extra)
    extra = list(extra)
    if args.idle_timeout is not None and not any(
        a.split("=", 1)[0] == "--enable-metrics" for a in extra
    ):
        extra.append("--enable-metrics")  # how serve sees traffic from other clients
    config = server_config_from_args(args, extra)
    progress = StartupProgress(label=args.model_path)
    progress.relaunch_note = False
    events = _Events(progress)
    model = AsyncSGLangModel(args.model_path, api_key=args.api_key, server=config,
                             on_event=events)
    signals = StopSignals()
    signals.install()
    keeper: asyncio.Task[None] | None = None
    try:
        await model.start()
        _print(f"SGLang server for {args.model_path} is ready.")
        _print(f"  URL:      {model.base_url}")
        _print(f"  OpenAI:   {model.base_url}/v1")
        _print(f"  API key:  {model.api_key}")
        _print(f"  pid:      {model.pid}")
        idle = (f"stops after {args.idle_timeout:g} s without requests"
                if args.idle_timeout is not None else "never stopped for inactivity")
        _print(f"  Idle:     {idle}. Ctrl-C or SIGTERM stops it.")
        if args.idle_timeout is not None:
            keeper = asyncio.ensure_future(
                _keep_alive_on_traffic(model, min(1.0, args.idle_timeout / 4))
            )
        waiter = asyncio.ensure_future(signals.stop.wait())
        ended = asyncio.ensure_future(events.wait_for("idle_stopped", "crashed",
                                                      timeout=float("inf")))
        try:
            await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            ended.cancel()
        if signals.received:
            _print(f"Received {signals.received[0]}: stopping the server …", file=sys.stderr)
            return EXIT_OK
        event = ended.result() if ended.done() and not ended.cancelled() else None
        if event is not None and event.kind == "crashed":
            error = model.server.error if model.server is not None else None
            if isinstance(error, BaseException):
                raise error
            raise ServerCrashedError("the server crashed")
        _print(f"Stopped after {args.idle_timeout:g} s without requests (--idle-timeout).",
               file=sys.stderr)
        return EXIT_OK
    finally:
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        await model.aclose()
        progress.close()
        signals.remove()


# ---------------------------------------------------------------------------------- status


async def _status(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if extra:
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
    url = args.url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    report: dict[str, Any] = {"url": url}
    async with _http.new_async_client() as client:

        async def get(*paths: str) -> Any:
            for path in paths:
                response = await client.get(url + path, headers=headers, timeout=args.timeout)
                if response.status_code in (401, 403):
                    raise AuthenticationError(
                        f"{url}{path} answered {response.status_code}: the API key was refused",
                        status_code=response.status_code,
                    )
                if response.status_code in (404, 405):
                    continue
                if response.status_code != 200:
                    return None
                try:
                    return response.json()
                except ValueError:
                    return None
            return None

        try:
            health = await client.get(f"{url}/health", timeout=args.timeout)
        except _http.httpx.TransportError as exc:
            raise ServerUnavailableError(
                f"could not reach the server at {url}: {type(exc).__name__}: {exc}"
            ) from exc
        report["healthy"] = health.status_code == 200
        report["health_status"] = health.status_code
        try:
            info = await get("/model_info", "/get_model_info")
            server_info = await get("/server_info", "/get_server_info")
            models = await get("/v1/models")
        except _http.httpx.TransportError as exc:
            raise ServerUnavailableError(
                f"the server at {url} stopped answering: {type(exc).__name__}"
            ) from exc
    if isinstance(info, dict):
        report["model_info"] = {k: v for k, v in info.items() if v not in (None, "", [])}
    if isinstance(server_info, dict):  # never echo the rest: it may hold the API key in clear
        report["version"] = server_info.get("version")
    if isinstance(models, dict) and isinstance(models.get("data"), list):
        report["models"] = [
            {"id": card.get("id"), "max_model_len": card.get("max_model_len")}
            for card in models["data"] if isinstance(card, dict)
        ]
    if args.json:
        _print(json.dumps(report, indent=2, sort_keys=True))
    else:
        state = "healthy" if report["healthy"] else f"NOT healthy (/health {health.status_code})"
        _print(f"{url}: {state}")
        _print(f"  version:  {report.get('version') or 'unknown'}")
        model_info = report.get("model_info") or {}
        for key in ("model_path", "served_model_name", "is_generation", "tool_call_parser",
                    "reasoning_parser", "architectures"):
            if key in model_info:
                _print(f"  {key + ':':<18}{model_info[key]}")
        for card in report.get("models", []):
            _print(f"  model:    {card['id']} (max_model_len {card['max_model_len']})")
    return EXIT_OK if report["healthy"] else EXIT_FAILURE


# ------------------------------------------------------------------------------------ main


def _run(coro: Awaitable[int]) -> int:
    """Run ``coro``; SIGTERM cancels it like Ctrl-C so that ``finally`` blocks clean up."""

    async def wrapper() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        installed = False
        if threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
                installed = True
            except (NotImplementedError, RuntimeError):
                installed = False
        try:
            return await coro
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(wrapper())
    except (KeyboardInterrupt, asyncio.CancelledError):
        _print(f"{PROG}: interrupted; the server was stopped.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _usage_exit(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sglang-backend``; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
    debug = bool(getattr(args, "debug", False))
    if extra and args.command != "serve":
        # argparse's own wording and exit code 2
        _usage_exit(parser, f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(debug)
    commands: dict[str, Callable[[], Awaitable[int]]] = {
        "demo": lambda: _demo(args),
        "chat": lambda: _chat(args, extra),
        "serve": lambda: _serve(args, extra),
        "status": lambda: _status(args, extra),
    }
    what = {"demo": "demo failed", "chat": "chat failed", "serve": "serve failed",
            "status": "status failed"}[args.command]
    try:
        return _run(commands[args.command]())
    except UsageError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(parser.format_usage())
        sys.stderr.write(f"{PROG} {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the one place that turns failures into a paragraph
        return _report(exc, debug, what)


if __name__ == "__main__":
    sys.exit(main())
