"""The download phase: fetch a Hub model before launching, with progress, under its own deadline.

Left to SGLang, a Hub id is downloaded inside the startup deadline with no progress, and an
unreachable or gated Hub fails late. Here ``huggingface_hub.snapshot_download`` (the code
SGLang itself would run) fetches the snapshot in a worker thread first: progress arrives
as ``download`` events, ``ServerConfig.download_timeout`` bounds it apart from
``startup_timeout``, and once the snapshot is complete the server gets ``HF_HUB_OFFLINE=1``,
so it starts with no network access at all.

The Hub, cache and token settings are read from the server's environment (``os.environ``
updated by ``ServerConfig.env``), so the download lands where the server will look.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._diagnose import classify
from .errors import ServerStartError, ServerStartTimeout

if TYPE_CHECKING:
    from .config import ServerConfig

__all__ = ["hub_settings", "is_hub_id", "prepare_model"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "on", "yes", "true"}
_REPORT_EVERY = 0.5  # seconds between progress events (plus one per finished file)
# Seconds to let the worker notice a timeout. It checks at each progress update (one per
# chunk read, up to 10 MB), so it may run on briefly after that; the partial files are
# resumed by the next attempt.
_CANCEL_WAIT = 1.0

Emit = Callable[..., Any]


class _Cancelled(Exception):
    """Raised inside the download thread (from a progress update) to stop it."""


def is_hub_id(model_path: str) -> bool:
    """``org/name`` (or a bare ``name``) that is not an existing local path (blocking: stat)."""
    return bool(_HUB_ID.match(model_path)) and not os.path.exists(os.path.expanduser(model_path))


def hub_settings(env: Mapping[str, str]) -> dict[str, str | None]:
    """The endpoint, cache folder and token the server would use with ``env``."""
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if cache is None and env.get("HF_HOME"):
        cache = os.path.join(env["HF_HOME"], "hub")
    return {
        "endpoint": env.get("HF_ENDPOINT"),
        "cache_dir": cache,
        "token": env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN"),
    }


class _Progress:
    """Totals across the download's progress bars; reported through ``emit`` on the loop."""

    def __init__(self, repo: str, emit: Emit | None, loop: asyncio.AbstractEventLoop) -> None:
        self.repo = repo
        self.emit = emit
        self.loop = loop
        self.cancelled = threading.Event()
        self.bytes = 0
        self.total_bytes = 0
        self.files = 0
        self.total_files = 0
        self._lock = threading.Lock()
        self._last = 0.0

    def detail(self) -> dict[str, Any]:
        return {"repo": self.repo, "bytes": self.bytes, "total_bytes": self.total_bytes,
                "files": self.files, "total_files": self.total_files}

    def send(self, phase: str, **extra: Any) -> None:
        if self.emit is not None:
            self.emit("download", None, phase=phase, **self.detail(), **extra)

    def update(self, unit: str, n: float, total: float | None) -> None:
        """Called from the download threads on every bar update."""
        if self.cancelled.is_set():
            raise _Cancelled
        with self._lock:
            if unit == "B":  # the byte bars: the largest is the aggregate of all files
                self.bytes = max(self.bytes, int(n))
                self.total_bytes = max(self.total_bytes, int(total or 0))
                file_done = False
            else:  # the files bar: one update per finished file
                self.files, self.total_files = int(n), int(total or 0)
                file_done = True
            now = time.monotonic()
            if not file_done and now - self._last < _REPORT_EVERY:
                return
            self._last = now
        self.loop.call_soon_threadsafe(self.send, "progress")

    def bar_class(self) -> type[Any]:
        """A tqdm class for ``snapshot_download(tqdm_class=...)`` that reports here."""
        from tqdm import tqdm  # a huggingface_hub dependency

        progress = self

        class _Sink:
            def write(self, text: str) -> None:
                pass

            def flush(self) -> None:
                pass

        class _Bar(tqdm):  # type: ignore[type-arg]
            monitor_interval = 0  # no tqdm monitor thread

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.pop("name", None)
                kwargs.update(disable=False, file=_Sink())
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                result: bool | None = super().update(n)
                progress.update(str(self.unit), float(self.n), self.total)
                return result

        return _Bar


def _snapshot(repo: str, settings: Mapping[str, str | None], bar: type[Any]) -> str:
    from huggingface_hub import snapshot_download

    path: str = snapshot_download(
        repo,
        endpoint=settings["endpoint"],
        cache_dir=settings["cache_dir"],
        token=settings["token"],
        tqdm_class=bar,
    )
    return path


def _download_error(repo: str, exc: BaseException) -> ServerStartError:
    text = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    found = classify(text.splitlines())
    summary = f"downloading {repo} from the Hub failed before launch"
    if found is not None:
        return found.error(summary, evidence=found.evidence, hint=found.hint)
    first = text.splitlines()[0] if text else type(exc).__name__
    return ServerStartError(
        summary, evidence=first,
        hint="Check the network, HF_ENDPOINT and any proxy, or download the model yourself "
        "and pass its local path.",
    )


def _wanted(model_path: str, env: Mapping[str, str]) -> bool:
    """Blocking checks (stat, import lookup): whether the download phase applies."""
    if env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return False  # the user wants no network: the server reads its cache as it is
    if importlib.util.find_spec("huggingface_hub") is None:
        return False
    return is_hub_id(model_path)


async def prepare_model(
    model_path: str, config: ServerConfig, *, emit: Emit | None = None
) -> dict[str, str]:
    """Download ``model_path`` if it is a Hub id; return the server's env additions.

    Events (``emit("download", None, **detail)``): ``phase`` ``start``, ``progress``
    (``bytes``, ``total_bytes``, ``files``, ``total_files``) and ``done`` (``seconds``, ``path``).
    Raises a classified :class:`~sglang_backend.errors.ServerStartError` (gated, not found, …)
    or :class:`~sglang_backend.errors.ServerStartTimeout` after ``download_timeout``.
    """
    env = {**os.environ, **config.env}
    if not await asyncio.to_thread(_wanted, model_path, env):
        return {}
    progress = _Progress(model_path, emit, asyncio.get_running_loop())
    settings = hub_settings(env)
    progress.send("start", endpoint=settings["endpoint"] or "https://huggingface.co")
    started = time.monotonic()
    worker = asyncio.ensure_future(
        asyncio.to_thread(_snapshot, model_path, settings, progress.bar_class())
    )
    # A worker still running after a timeout ends later: its error is expected, not "lost".
    worker.add_done_callback(lambda task: task.cancelled() or task.exception())
    try:
        done, _ = await asyncio.wait({worker}, timeout=config.download_timeout)
    finally:
        if not worker.done():  # timed out or cancelled: stop the thread at its next chunk
            progress.cancelled.set()
            await asyncio.wait({worker}, timeout=_CANCEL_WAIT)
    if not done:
        raise ServerStartTimeout(
            f"downloading {model_path} was not finished within {config.download_timeout:g} s "
            f"(download_timeout; {progress.bytes} of {progress.total_bytes} bytes, "
            f"{progress.files} of {progress.total_files} files)"
        )
    exc = worker.exception()
    if exc is not None:
        raise _download_error(model_path, exc) from exc
    progress.send("done", seconds=round(time.monotonic() - started, 3), path=worker.result())
    return {"HF_HUB_OFFLINE": "1"}
