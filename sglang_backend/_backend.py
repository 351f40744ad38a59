"""What a model's server is, whichever kind: its states and events, the :class:`Backend`
interface the model talks to (admission, readiness, failure verdicts, its HTTP pool), and the
port a launched server keeps reserved. The two kinds are :class:`~sglang_backend._remote.
RemoteServer` (connect mode) and :class:`~sglang_backend.server.LaunchedServer`.
"""


from __future__ import annotations

import abc
import asyncio
import enum
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _http
from ._health import answers_health
from .errors import (
    ModelClosedError,
    PortInUseError,
    ServerHungError,
    SGLangError,
)

__all__ = ["Backend", "EventCallback", "PortReservation", "Recovery", "ServerEvent", "ServerState",
           "connect_host", "log_failure", "own_copy", "server_url"]

logger = logging.getLogger("sglang_backend.server")


class ServerState(str, enum.Enum):
    """Where a model's server is in its lifecycle."""

    CREATED = "created"
    STARTING = "starting"
    READY = "ready"
    SLEEPING = "sleeping"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True)
class Recovery:
    """A backend's verdict on a request that failed in transport (:meth:`Backend.recover`)."""

    resend: bool = False
    """The request may be sent again: it never reached a dead server, or the server is back."""
    error: SGLangError | None = None
    """The typed error to raise instead: the server died with the request, the model closed."""


@dataclass(frozen=True)
class ServerEvent:
    """Something that happened to the server, passed to ``on_event`` and logged.

    ``kind`` is one of:

    * ``launching`` / ``relaunching`` — a server (or router group) is being started;
    * ``download`` — the model is downloaded before the launch (``detail``: ``phase`` one of
      ``start``/``progress``/``done``, ``bytes``, ``total_bytes``, ``files``, ``total_files``);
    * ``phase`` — a startup phase seen in the log (``detail``: ``phase``, ``elapsed``, ``line``);
    * ``ready`` — ready to serve (``detail["duration"]``: launch to ready, in seconds);
    * ``start_failed`` — the start failed (``detail``: ``error``, ``returncode``);
    * ``idle_stopped`` / ``stopped`` — stopped by the watchdog / on request, emitted once the
      state is STOPPED (``detail``: ``returncode``, ``duration``);
    * ``crashed`` — the server died while serving (``detail["returncode"]``);
    * ``sleeping`` / ``awake`` — the warm sleep (``ServerConfig.sleep_timeout``): the server's
      memory was released with the process kept (state SLEEPING) / resumed before the next
      request was admitted (``detail["duration"]``);
    * ``start_backoff`` — a second failed start in a row: requests fail fast with the last
      start error for ``detail["retry_in"]`` seconds (``detail["failures"]`` so far);
      ``start()`` still tries at once;
    * ``hung`` — a request timed out and ``/health`` did not answer within
      ``health_check_timeout``: the server was declared hung (``ServerHungError``), its tree
      killed (launch mode; the next request relaunches) or, in connect mode, requests fail
      fast until it answers again;
    * ``worker_crashed``, ``worker_relaunched``, ``worker_relaunch_failed`` — one local worker
      of a router group (``detail``: ``worker``, ``url``); the group keeps serving;
    * ``worker_unhealthy``, ``worker_healthy`` — a worker elsewhere (``worker_urls``,
      ``add_worker``) left or rejoined the router's rotation (``detail``: ``url``, ``local``);
    * ``worker_removed`` — ``remove_worker`` drained a worker out of the group (``detail``:
      ``url``, ``local``; a local one was then stopped);
    * ``closed`` — the model was closed.
    """

    kind: str
    pid: int | None = None
    base_url: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


EventCallback = Callable[[ServerEvent], None]


def log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("cleanup failed", exc_info=task.exception())


def own_copy(exc: BaseException) -> BaseException:
    """A fresh exception object with the same type, message and attributes as ``exc``."""
    copy = type(exc).__new__(type(exc), *exc.args)
    copy.__dict__.update(exc.__dict__)
    copy.args = exc.args
    return copy


def connect_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def server_url(host: str, port: int) -> str:
    host = connect_host(host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class PortReservation:
    """Holds a bound, non-listening socket on the server's port for the model's lifetime.

    SGLang's uvicorn binds with SO_REUSEADDR, which Linux allows next to our socket while ours
    is not listening; meanwhile no other process is handed this port by ``bind(0)``. So a free
    port is never raced, and the URL stays the same across idle stops and relaunches.
    """

    def __init__(self, host: str, port: int | None) -> None:
        family = socket.AF_INET6 if ":" in connect_host(host) else socket.AF_INET
        self._host = host
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port or 0))
        except OSError:
            self._sock.close()
            raise PortInUseError(host, port or 0) from None
        self.port: int = self._sock.getsockname()[1]

    def check_free(self) -> None:
        """Raise PortInUseError if another process now listens on the port."""
        family = self._sock.family
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self._host, self.port))
            except OSError:
                raise PortInUseError(self._host, self.port) from None

    def close(self) -> None:
        self._sock.close()


class Backend(abc.ABC):
    """What the model needs from a server: admission, readiness, error classification, and
    the connections to it.

    The backend owns its HTTP pool (:class:`~sglang_backend._http.ServerPool`): it creates it
    in :meth:`open`, replaces it for every server run (no keep-alive connection outlives the
    server it was made to) and closes it in :meth:`aclose`. Only
    :class:`~sglang_backend._lease.RequestPath` calls ``acquire``/``recover``/``release``.
    """

    base_url: str
    api_key: str | None
    def __init__(self, on_event: EventCallback | None) -> None:
        self._on_event = on_event
        self.state = ServerState.CREATED
        self.inflight = 0
        self._pool: _http.ServerPool | None = None
        # Held for a few instructions at a time (never across an await): admission from the
        # facade's threads against the idle stop on the loop.
        self._admission = threading.Lock()

    @property
    def pool(self) -> _http.ServerPool:
        """The connections of the current server run (after :meth:`open`)."""
        if self._pool is None:
            raise ModelClosedError("the server's connections are not open (closed model?)")
        return self._pool

    @abc.abstractmethod
    def _poolserver_url(self) -> str:
        """The URL the pool will connect to (decides whether a proxy applies)."""

    async def open(self) -> None:
        """Create the connection pool (in a thread: building an SSL context reads files)."""
        if self._pool is None:
            self._pool = await asyncio.to_thread(_http.ServerPool, self._poolserver_url())

    async def _renew_pool(self) -> None:
        """A fresh pool for the next server run; the old one is closed."""
        old = self._pool
        if old is None or self.state is ServerState.CLOSED:
            return
        self._pool = await asyncio.to_thread(_http.ServerPool, self._poolserver_url())
        await old.aclose()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

    def emit(self, kind: str, pid: int | None = None, **detail: Any) -> None:
        event = ServerEvent(kind, pid=pid, base_url=getattr(self, "base_url", None), detail=detail)
        logger.info("server event %s pid=%s %s", kind, pid, detail or "")
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event callback raised for %s", kind)

    @property
    def pid(self) -> int | None:
        return None

    @abc.abstractmethod
    async def acquire(self) -> object:
        """Admit one request (starting the server if needed); return a token for recover()."""

    @property
    def admin_key(self) -> str | None:
        """The ``--admin-api-key`` admin endpoints need (SGLang 0.5.23), if the server has one."""
        return None

    def direct_urls(self) -> list[str]:
        """Where requests that routers do not route (token counting, ``/abort_request``) go:
        the server itself, or every healthy worker of a router group."""
        return [self.base_url]

    def worker_api_key(self, url: str) -> str | None:
        """The key of the server at ``url`` (one of :meth:`direct_urls`)."""
        return self.api_key

    def try_acquire(self) -> tuple[bool, object]:
        """Admit one request now if the server is ready, from any thread; no start, no wait.

        Returns ``(True, token)`` when admitted, ``(False, None)`` when the caller must take
        the slow path (:meth:`acquire` on the loop). The blocking facade's requests come in
        here from their own threads, so admission, release and the idle stop's decision are
        taken under one lock.
        """
        return False, None

    def release(self) -> None:
        """The request admitted by acquire() is over (any thread)."""
        with self._admission:
            self.inflight -= 1

    @abc.abstractmethod
    async def start(self) -> None:
        """Make the server ready (launch, or check a remote one)."""

    @abc.abstractmethod
    async def recover(self, token: object, exc: BaseException, *, sent: bool) -> Recovery:
        """A request on ``token`` failed with a transport error (``sent``: it may have reached
        the server): may it be sent again, or what typed error says what happened?"""

    async def check_hung(self, token: object) -> ServerHungError | None:
        """A request on ``token`` timed out: is the server hung? (None: it answers.)

        ``/health`` must answer 200 within the short health-check bound; a server that does
        not is declared hung.
        """
        return None

    async def _answers_health(self, timeout: float) -> bool:
        try:
            client = self.pool.client
        except ModelClosedError:
            return False
        return await answers_health(client, f"{self.base_url}/health", timeout=timeout)

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release everything; final."""
