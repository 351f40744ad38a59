"""Server flags that must not be seen by other users: the API key, in a private file.

``/proc/PID/cmdline`` is world-readable, so a key passed as ``--api-key KEY`` is shown by
``ps`` to every local user. SGLang reads flags from a YAML file too (``--config FILE``; flags
on the command line override it), so the key goes into a file of mode 0600 in a fresh
directory of mode 0700, and argv only names the file. The file lives as long as the server
run it was written for.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Mapping

__all__ = ["PrivateArgsFile"]


class PrivateArgsFile:
    """A YAML file of SGLang flags only this user can read (JSON is valid YAML)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self._dir: str | None = None
        self.path: str | None = None

    def __repr__(self) -> str:
        return f"PrivateArgsFile({self.path!r}, keys={sorted(self._values)})"  # never values

    async def write(self) -> str:
        """Write the file (in a thread: file I/O stays off the event loop); return its path."""
        return await asyncio.to_thread(self._write)

    def _write(self) -> str:
        self.remove()
        directory = tempfile.mkdtemp(prefix="sglang-backend-")  # mode 0700
        path = os.path.join(directory, "server-args.yaml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(self._values, file)
        self._dir, self.path = directory, path
        return path

    def remove(self) -> None:
        """Delete the file and its directory (idempotent; a few syscalls, safe anywhere)."""
        directory, self._dir, self.path = self._dir, None, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
