"""What the CLI prints: exit codes, the one-paragraph error report, stdout/stderr lines, logging.

Only the library's light error classes are imported here, so building the parser (and
``--help``) never loads the SDK.
"""

from __future__ import annotations

import logging
import shlex
import sys
import traceback
from collections.abc import Sequence
from typing import TextIO

from ..errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    InvalidRequestError,
    LaunchCommandNotFoundError,
    PortInUseError,
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

__all__ = [
    "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "PROG", "UsageError",
    "format_error", "report", "say", "setup_logging",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

PROG = "sglang-backend"
_TAIL_LINES = 12
_TAIL_WIDTH = 240


class UsageError(Exception):
    """A command-line mistake found after parsing (exit code 2)."""


def say(text: str = "", *, end: str = "\n", file: TextIO | None = None) -> None:
    """Write one line (stdout unless ``file``) and flush: replies show up as they come."""
    stream = file if file is not None else sys.stdout
    stream.write(text + end)
    stream.flush()


def setup_logging(debug: bool) -> None:
    """``--debug``: the library's debug log on stderr; otherwise the library stays quiet."""
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


def report(exc: BaseException, debug: bool, what: str = "") -> int:
    """Print ``exc`` as one paragraph (and, with ``debug``, its traceback); the exit code."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.write(format_error(exc, what=what) + "\n")
    sys.stderr.flush()
    return EXIT_USAGE if isinstance(exc, (ConfigError, InvalidRequestError, UsageError)) else (
        EXIT_FAILURE
    )
