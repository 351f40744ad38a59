"""Startup progress for people watching a terminal, driven by :class:`ServerEvent`.

:class:`StartupProgress` is an ``on_event`` callback. While a server starts it shows the current
phase (``loading_weights``, ``capturing_cuda_graphs``, …), the elapsed time and the server's
last log line: as one live, self-updating line with `rich` when it is installed and the output
is a terminal, else as one plain line per phase (logs, CI, pipes). Other events (ready, idle
stop, crash, …) become one line each. Library users get the same events through ``on_event``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

from .server import ServerEvent

__all__ = ["StartupProgress", "rich_available"]

_LINE_WIDTH = 160


def rich_available() -> bool:
    """True when `rich` can be imported."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"


class _Renderer(Protocol):
    def start(self, label: str) -> None: ...
    def update(self, phase: str, line: str) -> None: ...
    def stop(self) -> None: ...
    def say(self, text: str) -> None: ...


class _PlainRenderer:
    """One line per phase; nothing is redrawn (safe for pipes, files and CI logs)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.monotonic()

    def start(self, label: str) -> None:
        self._started = time.monotonic()
        self.say(label)

    def update(self, phase: str, line: str) -> None:
        elapsed = time.monotonic() - self._started
        self.say(f"  [{elapsed:6.1f}s] {phase:<22} {_shorten(line, _LINE_WIDTH - 34)}")

    def stop(self) -> None:
        pass

    def say(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()


class _RichRenderer:
    """A live spinner line: phase, elapsed time (ticking), last log line."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console

        self._console = Console(file=stream, highlight=False)
        from rich.spinner import Spinner

        self._spinner = Spinner("dots")
        self._live: Any = None
        self._phase = "launching"
        self._line = ""
        self._started = time.monotonic()

    def _render(self) -> Any:
        from rich.text import Text

        elapsed = time.monotonic() - self._started
        width = max(self._console.width - 40, 20)
        text = Text.assemble(
            (f"{self._phase:<22}", "bold cyan"),
            (f"{elapsed:6.1f}s  ", "bold"),
            (_shorten(self._line, width), "dim"),
        )
        self._spinner.update(text=text)
        return self._spinner

    def start(self, label: str) -> None:
        from rich.live import Live

        self.stop()
        self._console.print(label)
        self._started = time.monotonic()
        self._phase, self._line = "launching", ""
        self._live = Live(
            get_renderable=self._render,
            console=self._console,
            transient=True,
            refresh_per_second=8,
        )
        self._live.start()

    def update(self, phase: str, line: str) -> None:
        self._phase, self._line = phase, line
        if self._live is not None:
            self._live.refresh()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def say(self, text: str) -> None:
        self._console.print(text, markup=False)


class StartupProgress:
    """An ``on_event`` callback rendering a server's startup and lifecycle for a terminal.

    Args:
        stream: where to write (default ``sys.stderr``, so stdout stays for replies).
        use_rich: force (True) or forbid (False) the live `rich` line; None = use it when
            `rich` is importable and ``stream`` is a terminal.
        label: what is being started, for the first line (e.g. the model name).

    Set ``relaunch_note = False`` where no request will relaunch an idle-stopped server.
    """

    def __init__(
        self, stream: TextIO | None = None, *, use_rich: bool | None = None, label: str = "server"
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        if use_rich is None:
            use_rich = rich_available() and _isatty(self._stream)
        self._renderer: _Renderer = (
            _RichRenderer(self._stream) if use_rich else _PlainRenderer(self._stream)
        )
        self._label = label
        self.live = use_rich
        self.relaunch_note = True
        self._files_shown: tuple[Any, Any] = (0, 0)

    def __call__(self, event: ServerEvent) -> None:
        kind, detail = event.kind, event.detail
        if kind in ("launching", "relaunching"):
            verb = "Relaunching" if kind == "relaunching" else "Launching"
            self._renderer.start(f"{verb} {self._label} …")
        elif kind == "phase":
            self._renderer.update(str(detail.get("phase", "?")), str(detail.get("line", "")))
        elif kind == "download":
            self._download(detail)
        elif kind == "ready":
            self._renderer.stop()
            duration = detail.get("duration")
            took = f" in {duration:.1f} s" if isinstance(duration, (int, float)) else ""
            pid = f", pid {event.pid}" if event.pid else ""
            self._renderer.say(f"Server ready{took} at {event.base_url}{pid}")
        elif kind == "start_failed":
            self._renderer.stop()  # the caller reports the error itself (with the log tail)
        elif kind == "idle_stopped":
            note = "; the next request relaunches it" if self.relaunch_note else ""
            self._renderer.say(f"Server idle: stopped (pid {event.pid}){note}")
        elif kind == "stopped":
            self._renderer.say(f"Server stopped (pid {event.pid})")
        elif kind == "crashed":
            self._renderer.stop()
            self._renderer.say(
                f"Server crashed (pid {event.pid}, return code {detail.get('returncode')})"
            )
        elif kind == "closed":
            self._renderer.stop()

    def _download(self, detail: Mapping[str, Any]) -> None:
        """Download progress: live, every update; plain, at start, per finished file, at end."""
        phase = detail.get("phase")
        files = (detail.get("files", 0), detail.get("total_files", 0))
        if phase == "start":
            self._files_shown = (0, 0)
            self._renderer.start(f"Downloading {detail.get('repo', self._label)} …")
        if not self.live and phase == "progress" and files == self._files_shown:
            return
        self._files_shown = files
        mib = 1 << 20
        text = (f"{files[0]}/{files[1]} files, {detail.get('bytes', 0) / mib:.1f} of "
                f"{detail.get('total_bytes', 0) / mib:.1f} MiB")
        if phase == "done":
            text += f" in {detail.get('seconds', 0):.1f} s"
        self._renderer.update("downloading", text)

    def close(self) -> None:
        """Stop the live line, if one is shown (idempotent)."""
        self._renderer.stop()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
