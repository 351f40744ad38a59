"""The ``sglang-backend`` command: ``demo``, ``chat``, ``serve`` and ``status``.

* ``sglang-backend demo`` runs the library against the CPU stand-in server (no GPU, nothing
  downloaded): startup progress, a streamed reply, structured output, the idle stop and the
  transparent relaunch, clean teardown.
* ``sglang-backend chat --model-path M "prompt"`` is a one-shot chat (``-i`` for a loop over
  stdin lines), launching SGLang or connecting to ``--url``.
* ``sglang-backend serve --model-path M [SGLang flags…]`` launches and supervises a server,
  prints its URL and API key and stops it cleanly on Ctrl-C / SIGTERM (``--pool FILE``: a
  pool of models behind one front).
* ``sglang-backend status --url U`` reports health, model, version and served models.

Startup progress goes to stderr (stdout carries replies only). Failures are reported as one
readable paragraph — what failed, the server's last log lines, what to try — unless
``--debug`` asks for the traceback. Exit codes: 0 ok, 1 runtime failure, 2 usage error.

This package parses and prints only; what a command does is the library's. This module
assembles the parser and dispatches; each command is one module (``_demo``, ``_chat``,
``_serve``, ``_serve_pool``, ``_status``), the error paragraph and printing are ``_report``.
The SDK, the HTTP client and the model are imported inside the command that runs, so
``--help`` and usage errors never load them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

from .. import __version__
from . import _chat, _demo, _serve, _status
from ._args import common_parser, server_config_from_args
from ._report import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    UsageError,
    format_error,
    report,
    say,
    setup_logging,
)

__all__ = [
    "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "format_error", "main",
    "server_config_from_args",
]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``sglang-backend`` (subcommands demo, chat, serve, status)."""
    common = common_parser()
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
    for command in (_demo, _chat, _serve, _status):
        command.add_parser(sub, common)
    return parser


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
        say(f"{PROG}: interrupted; the server was stopped.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _usage_exit(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sglang-backend``; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
    debug = bool(getattr(args, "debug", False))
    if extra and args.command != "serve":
        # argparse's own wording and exit code 2; only serve passes unknown flags on
        _usage_exit(parser, f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(debug)
    commands: dict[str, Callable[[], Awaitable[int]]] = {
        "demo": lambda: _demo.run(args),
        "chat": lambda: _chat.run(args),
        "serve": lambda: _serve.run(args, extra),
        "status": lambda: _status.run(args),
    }
    try:
        return _run(commands[args.command]())
    except UsageError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(parser.format_usage())
        sys.stderr.write(f"{PROG} {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the one place that turns failures into a paragraph
        return report(exc, debug, f"{args.command} failed")
