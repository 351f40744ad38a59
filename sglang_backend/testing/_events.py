"""The ``--standin-events-file`` writer and SGLang-style log setup (no heavy imports)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

__all__ = ["LOG_DATEFMT", "LOG_FORMAT", "EventLog", "setup_logging"]

LOG_FORMAT = "[%(asctime)s] %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"


class EventLog:
    """Appends ``{"event", "t", "pid", ...fields}`` JSON lines to a file, flushed one by one.

    Lines: ``listening``, ``ready``, ``request`` (``rid``, ``kind``), ``abort`` (``rid``,
    ``reason``), ``load_lora``/``unload_lora`` (``name``), ``update_weights``,
    ``flush_cache``, ``release_memory``/``resume_memory`` (``tags``), ``fail``, ``exit``.
    """

    def __init__(self, path: str | None) -> None:
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if path:
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept for the process life

    def write(self, event: str, **fields: Any) -> None:
        """Append one event line (extra JSON-able *fields* after the standard ones) and flush it."""
        if self._file is None:
            return
        line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **fields}) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        """Close the file (further writes are dropped)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def setup_logging(level: str) -> logging.Logger:
    """Configure SGLang-like logging to stderr and return the stand-in's logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt=LOG_DATEFMT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return logging.getLogger("sglang.srt")
