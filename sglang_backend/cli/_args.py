"""Options several commands share, their value types, and the ServerConfig a command line asks for.

The typed SGLang flags of ``serve`` come from the config's own table (``config._TYPED_FLAGS``)
and field types, so a typed option added to :class:`ServerConfig` is a ``serve`` flag at once.
"""

from __future__ import annotations

import argparse
import shlex
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from ..config import _TYPED_FLAGS, ServerConfig
from ._report import UsageError

__all__ = [
    "SERVE_TYPED", "add_launch_options", "common_parser", "non_negative", "positive",
    "server_config_from_args",
]


def _value_type(field: str) -> Callable[[str], Any]:
    """``int`` for ``tp_size: int | None`` and so on: what argparse converts the text with."""
    annotation = ServerConfig.model_fields[field].annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
    else:
        kinds = [annotation]
    if len(kinds) != 1 or kinds[0] not in (int, float, str):
        raise TypeError(f"ServerConfig.{field}: no command-line type for {annotation!r}")
    kind: Callable[[str], Any] = kinds[0]
    return kind


# Typed SGLang flags of `serve`: flag (and aliases) -> ServerConfig field, value type.
SERVE_TYPED: tuple[tuple[tuple[str, ...], str, Callable[[str], Any]], ...] = tuple(
    (flags, field, _value_type(field)) for field, flags in _TYPED_FLAGS.items()
)


def common_parser() -> argparse.ArgumentParser:
    """The options every command takes (``--debug``), as an argparse parent."""
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


def seconds_or_none(text: str) -> float | None:
    """Seconds, or ``0``/``none``/``never``/``off`` for no limit."""
    if text.strip().lower() in ("0", "none", "never", "off"):
        return None
    value = _number(text, "seconds or 'none'")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def add_launch_options(parser: argparse.ArgumentParser, *, idle_default: float | None) -> None:
    """Supervision options of the commands that launch a server (``chat``, ``serve``)."""
    group = parser.add_argument_group("server supervision (launch mode)")
    group.add_argument("--startup-timeout", type=positive, default=None, metavar="S",
                       help="seconds allowed for launch + load + warm-up (default 1800)")
    group.add_argument("--idle-timeout", type=seconds_or_none, default=idle_default,
                       metavar="S", help="stop the server after S idle seconds; 'none' never "
                       f"(default {idle_default if idle_default is not None else 'none'})")
    group.add_argument("--shutdown-timeout", type=non_negative, default=None, metavar="S",
                       help="grace after SIGTERM before the tree is SIGKILLed (default 10)")
    # Advanced/hidden: the argv prefix that starts the server (tests point it at the stand-in).
    group.add_argument("--launch-command", default=None, help=argparse.SUPPRESS)


def _launch_command(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    # Split like a shell would tokenize, but nothing is ever run through a shell.
    argv = tuple(shlex.split(text))
    if not argv:
        raise UsageError("--launch-command must not be empty")
    return argv


def server_config_from_args(
    args: argparse.Namespace, extra: Sequence[str] = (), **options: Any
) -> ServerConfig:
    """The ServerConfig a ``chat`` or ``serve`` command line asks for (ConfigError if bad);
    ``options`` are more ServerConfig fields the command sets itself."""
    fields: dict[str, Any] = {
        "launch_command": _launch_command(args.launch_command),
        "inactivity_timeout": args.idle_timeout,
        "extra_args": tuple(extra),
    }
    for name in ("startup_timeout", "shutdown_timeout", "host", "port"):
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    for _, field, _ in SERVE_TYPED:
        value = getattr(args, field, None)
        if value is not None:
            fields[field] = value
    return ServerConfig(**fields, **options)
