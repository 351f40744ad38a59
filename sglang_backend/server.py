"""The server lifecycle: one explicit state machine per model.

::

    CREATED ──start──▶ STARTING ──ready──▶ READY ──idle/stop──▶ STOPPING ──▶ STOPPED
                          │  ▲                │ ▲ sleep/wake                     │
                          │  │                ▼ │                                │
                          │  │              SLEEPING ──idle/stop──▶ STOPPING     │
                          │  └──────── next request relaunches ◀─────────────────┘
                          ▼                   ▼ (process died, hung)
                        FAILED ◀──────────────┘          (next request relaunches)
    STARTING ──start cancelled──▶ STOPPED;  any state ──aclose()──▶ CLOSED (final)

Every change of a launched server's state goes through ``LaunchedServer._set_state``, which
refuses a move the diagram does not have. Rules:

* Single flight: concurrent first requests share one start.
* Admission and going idle are mutually exclusive: both are decided synchronously on the
  event loop (no ``await`` between the check and the state change), so a request is either
  admitted to a READY server, which then cannot go idle until it is released, or it waits for
  the stop to finish and relaunches the server.
* Cancelling every waiter of a start cancels the start, which kills the half-started tree.
* The API key never appears in logs or errors.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import logging
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _http
from ._diagnose import check_before_launch
from ._health import answers_health, poll_until
from ._process import Phase, ServerProcess, describe_returncode
from ._secrets import PrivateArgsFile
from ._supervised import SupervisedTree
from ._translate import check_response
from .config import ServerConfig
from .errors import (
    ModelClosedError,
    PortInUseError,
    ServerCrashedError,
    ServerError,
    ServerHungError,
    ServerUnavailableError,
    SGLangError,
)
from .router import RouterGroup, WorkerInfo
from .watchdog import DirectTraffic, InactivityWatchdog

__all__ = ["Backend", "LaunchedServer", "PortReservation", "Recovery", "RemoteServer", "ServerEvent",
           "ServerState"]

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


_S = ServerState
# Where a launched server may go from each state (the module's diagram); CLOSED is final.
_NEXT: Mapping[ServerState, frozenset[ServerState]] = {
    _S.CREATED: frozenset({_S.STARTING, _S.CLOSED}),
    _S.STARTING: frozenset({_S.READY, _S.FAILED, _S.STOPPED, _S.CLOSED}),
    _S.READY: frozenset({_S.SLEEPING, _S.STOPPING, _S.FAILED, _S.CLOSED}),
    _S.SLEEPING: frozenset({_S.READY, _S.STOPPING, _S.FAILED, _S.CLOSED}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.CLOSED}),
    _S.STOPPED: frozenset({_S.STARTING, _S.CLOSED}),
    _S.FAILED: frozenset({_S.STARTING, _S.CLOSED}),
    _S.CLOSED: frozenset(),
}
_CLOSABLE = frozenset(state for state, after in _NEXT.items() if _S.CLOSED in after)


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


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("cleanup failed", exc_info=task.exception())


async def _wait_through_cancellation(task: asyncio.Task[Any]) -> None:
    """Wait until ``task`` is done even if the waiter is cancelled again meanwhile.

    anyio's cancel scopes (the sync facade's portal) re-deliver cancellation at every await:
    a plain ``await asyncio.wait({task})`` would return at once and leave the half-started
    tree being killed in the background after the caller was told the start was cancelled.
    The wait is short: the cancelled start only SIGKILLs its tree.
    """
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task})


def _own_copy(exc: BaseException) -> BaseException:
    """A fresh exception object with the same type, message and attributes as ``exc``."""
    copy = type(exc).__new__(type(exc), *exc.args)
    copy.__dict__.update(exc.__dict__)
    copy.args = exc.args
    return copy


def _connect_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url(host: str, port: int) -> str:
    host = _connect_host(host)
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
        family = socket.AF_INET6 if ":" in _connect_host(host) else socket.AF_INET
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
    def _pool_url(self) -> str:
        """The URL the pool will connect to (decides whether a proxy applies)."""

    async def open(self) -> None:
        """Create the connection pool (in a thread: building an SSL context reads files)."""
        if self._pool is None:
            self._pool = await asyncio.to_thread(_http.ServerPool, self._pool_url())

    async def _renew_pool(self) -> None:
        """A fresh pool for the next server run; the old one is closed."""
        old = self._pool
        if old is None or self.state is ServerState.CLOSED:
            return
        self._pool = await asyncio.to_thread(_http.ServerPool, self._pool_url())
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


class RemoteServer(Backend):
    """Connect mode: a server (or router) someone else runs. Never launched or stopped.

    ``connect_timeout`` bounds how long nothing may listen at the URL: a dead URL fails within
    it, while a server that answers but is still starting (``/health`` 503) is waited for up
    to ``startup_timeout``.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        startup_timeout: float,
        connect_timeout: float,
        health_check_timeout: float = 5.0,
        on_event: EventCallback | None = None,
    ) -> None:
        super().__init__(on_event)
        self.base_url = url
        self.api_key = api_key
        self._timeout = startup_timeout
        self._connect_timeout = connect_timeout
        self._health_check_timeout = health_check_timeout
        self._hung = False

    def _pool_url(self) -> str:
        return self.base_url

    def __repr__(self) -> str:
        return f"RemoteServer({self.base_url!r}, state={self.state.value})"

    def _auth(self) -> dict[str, str]:
        return _http.bearer_headers(self.api_key)

    async def acquire(self) -> object:
        if self.state is ServerState.CLOSED:
            raise ModelClosedError("the model is closed")
        if self._hung:
            # Declared hung by a timed-out request: fail fast until it answers again.
            if not await self._answers_health(self._health_check_timeout):
                raise ServerHungError(
                    f"the server at {self.base_url} still does not answer /health"
                )
            self._hung = False
        with self._admission:
            self.inflight += 1
        return None

    def try_acquire(self) -> tuple[bool, object]:
        if self.state is ServerState.CLOSED or self._hung:
            return False, None
        with self._admission:
            self.inflight += 1
        return True, None

    async def start(self) -> None:
        if self.state is ServerState.CLOSED:
            raise ModelClosedError("the model is closed")
        await self.wait_healthy(self._timeout)
        await self._check_key()
        self.state = ServerState.READY
        self.emit("ready")

    async def _check_key(self) -> None:
        """``/health`` needs no key: ask an authenticated endpoint, so a wrong key fails here."""
        response = await self.pool.client.get(f"{self.base_url}/v1/models", headers=self._auth(),
                                              timeout=self._connect_timeout + 30.0)
        if response.status_code in (401, 403):
            check_response(response)

    async def wait_healthy(self, timeout: float) -> None:
        refused_since: float | None = None
        last: str = "no answer"

        async def healthy() -> bool:
            nonlocal refused_since, last
            try:
                response = await self.pool.client.get(f"{self.base_url}/health", timeout=30.0)
                if response.status_code == 200:
                    return True
                last = f"/health answered {response.status_code}"
                refused_since = None  # something answers: it may be starting
            except _http.httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                refused_since = time.monotonic() if refused_since is None else refused_since
            if refused_since is not None and time.monotonic() - refused_since >= self._connect_timeout:
                raise ServerUnavailableError(
                    f"nothing answers at {self.base_url} (connect timeout "
                    f"{self._connect_timeout:g} s; {last})"
                )
            return False

        if not await poll_until(healthy, first=0.05, cap=1.0, timeout=timeout):
            raise ServerUnavailableError(
                f"the server at {self.base_url} was not healthy within {timeout:g} s ({last})"
            )

    async def recover(self, token: object, exc: BaseException, *, sent: bool) -> Recovery:
        if sent:
            return Recovery()
        # Not connected: the server may be restarting; wait on its health, then retry once.
        try:
            await self.wait_healthy(self._timeout)
        except SGLangError as unavailable:
            return Recovery(error=unavailable)
        return Recovery(resend=True)

    async def check_hung(self, token: object) -> ServerHungError | None:
        if await self._answers_health(self._health_check_timeout):
            return None
        self._hung = True
        self.emit("hung", health_check_timeout=self._health_check_timeout)
        return ServerHungError(
            f"the server at {self.base_url} stopped answering: a request timed out and /health "
            f"gave no 200 within {self._health_check_timeout:g} s"
        )

    async def aclose(self) -> None:
        self.state = ServerState.CLOSED
        await self._close_pool()


@dataclass
class _Tasks:
    """A launched server's background work; each is None while not under way."""

    start: asyncio.Task[None] | None = None
    """The single-flight start every waiter shares."""
    stop: asyncio.Task[None] | None = None
    """The stop under way (idle, or asked for)."""
    exit_watch: asyncio.Task[None] | None = None
    """Waits for the serving tree to exit (a crash while serving)."""
    cleanup: asyncio.Task[None] | None = None
    """Kills what is left of a crashed or hung tree; the next start waits for it."""
    sleep: asyncio.Task[bool] | None = None
    """The warm sleep's memory release (True: released)."""
    wake: asyncio.Task[None] | None = None
    """Resuming the memory before the next admission (single flight)."""


class LaunchedServer(Backend):
    """Launch mode: the library owns the server process from launch to teardown.

    Public attributes for inspection: ``state``, ``pid``, ``base_url``, ``launches``,
    ``inflight`` (requests and open streams), ``process`` (the current
    :class:`~sglang_backend._supervised.SupervisedTree`: a
    :class:`~sglang_backend._process.ServerProcess` or a :class:`~sglang_backend.router.RouterGroup`)
    and ``error`` (what put it in FAILED: the start error or a ServerCrashedError).
    """

    def __init__(
        self,
        model_path: str,
        config: ServerConfig,
        *,
        api_key: str | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        super().__init__(on_event)
        self.model_path = model_path
        self.config = config
        self.api_key = api_key or (
            config.api_key.get_secret_value() if config.api_key else secrets.token_hex(24)
        )
        self._reservation: PortReservation | None = None
        self.process: SupervisedTree | None = None
        self._worker_reservations: list[PortReservation] = []
        self.error: BaseException | None = None
        self._tasks = _Tasks()
        self._start_waiters = 0
        self._start_failures = 0
        self._retry_at = 0.0
        self._launches = 0
        self._after_ready: list[Callable[[LaunchedServer], Awaitable[None]]] = []
        self._watchdog = InactivityWatchdog(
            config.inactivity_timeout, self._idle_stop,
            sleep_after=config.sleep_timeout, on_sleep=self._fall_asleep,
            traffic=DirectTraffic(self.direct_urls) if config.keep_alive_on_traffic else None,
        )
        # The key reaches the server through this file, never argv (see _secrets).
        self._secret_file = PrivateArgsFile(config.secret_args(self.api_key))
        self.base_url = ""

    def _pool_url(self) -> str:
        return self.base_url or _url(self.config.host, self.config.port or 0)

    @property
    def admin_key(self) -> str | None:
        secret = self.config.admin_api_key
        return secret.get_secret_value() or None if secret is not None else None

    def direct_urls(self) -> list[str]:
        process = self.process
        urls = [url.rstrip("/") for url in process.direct_urls()] if process is not None else []
        return urls or [self.base_url]

    def worker_api_key(self, url: str) -> str | None:
        process = self.process
        key = process.worker_api_key(url) if process is not None else None
        return key if key is not None else self.api_key

    def __repr__(self) -> str:
        return (f"LaunchedServer({self.model_path!r}, state={self.state.value}, "
                f"url={self.base_url or None!r}, launches={self._launches})")

    # -- the state ---------------------------------------------------------------------
    def _set_state(
        self,
        new: ServerState,
        *,
        when: Collection[ServerState] | None = None,
        idle: bool = False,
        event: str | None = None,
        pid: int | None = None,
        **detail: Any,
    ) -> bool:
        """The one place the state changes; True when it did.

        The check and the change are one step under the admission lock, so no thread's
        admission comes between them: nothing changes unless the state is one of ``when``
        (when given) and, with ``idle``, no request is in flight. A move the module's diagram
        does not have is a bug and raises. ``event`` (with ``pid`` and ``detail``) is emitted
        once the state says so, outside the lock: a listener may act on it at once.
        """
        with self._admission:
            old = self.state
            if (when is not None and old not in when) or (idle and self.inflight):
                return False
            if new not in _NEXT[old]:
                raise RuntimeError(f"server state {old.value} -> {new.value} is not a transition")
            self.state = new
        if event is not None:
            self.emit(event, pid, **detail)
        return True

    def _lose(self, process: SupervisedTree, error: BaseException, event: str | None = None,
              **detail: Any) -> None:
        """The serving tree is lost (died, hung, cannot wake): FAILED at once, synchronously,
        so no request is admitted to it, and what is left of it cleaned up in the background."""
        self.error = error
        self._watchdog.stop()
        self._set_state(ServerState.FAILED, event=event, pid=process.pid, **detail)
        self._tasks.cleanup = asyncio.ensure_future(self._after_crash(process))
        self._tasks.cleanup.add_done_callback(_log_failure)

    # -- observable state -------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None and process.returncode is None else None

    @property
    def launches(self) -> int:
        """How many times a server process was launched (relaunches included)."""
        return self._launches

    @property
    def asleep(self) -> bool:
        """In the warm sleep with its memory released, and no wake under way (a server
        falling asleep or waking still holds, or takes, its memory)."""
        sleeping = self._tasks.sleep
        return (self.state is ServerState.SLEEPING and self._tasks.wake is None
                and sleeping is not None and sleeping.done() and not sleeping.cancelled()
                and sleeping.exception() is None and sleeping.result())

    # -- admission ----------------------------------------------------------------------
    async def acquire(self) -> object:
        """Admit one request; start or relaunch the server first if needed.

        Returns the process the request runs on (pass it back to :meth:`recover`).
        """
        while True:
            admitted, token = self.try_acquire()
            if admitted:
                return token
            await self._ensure_ready()

    def try_acquire(self) -> tuple[bool, object]:
        with self._admission:
            if self.state is not ServerState.READY:
                return False, None
            self.inflight += 1
            self._watchdog.touch()
            return True, self.process

    def release(self) -> None:
        with self._admission:
            self.inflight -= 1
            self._watchdog.touch()

    def touch(self) -> None:
        """Record activity the library did not see (restart the idle count)."""
        self._watchdog.touch()

    async def start(self) -> None:
        # An explicit start always tries at once, crash-loop backoff or not.
        self._retry_at = 0.0
        await self._ensure_ready()

    async def _ensure_ready(self) -> None:
        state = self.state
        if state is ServerState.CLOSED:
            raise ModelClosedError("the model is closed")
        if state is ServerState.READY:
            return
        if state is ServerState.STOPPING:
            assert self._tasks.stop is not None
            await asyncio.shield(self._tasks.stop)
            return
        if state is ServerState.SLEEPING:
            if self._tasks.wake is None:
                self._tasks.wake = asyncio.ensure_future(self._wake())
            await asyncio.shield(self._tasks.wake)
            return
        if self._tasks.start is None:
            last = self._backing_off()
            if last is not None:
                raise _own_copy(last) from last
            self._tasks.start = asyncio.ensure_future(self._start())
            self._tasks.start.add_done_callback(self._start_done)
        task = self._tasks.start
        self._start_waiters += 1
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done() and self._start_waiters == 1:
                # The last waiter gave up: abandon the start and kill the half-started tree.
                task.cancel()
                await _wait_through_cancellation(task)
            raise
        except Exception as exc:
            # Each waiter gets its own exception object (one shared instance would gather every
            # waiter's traceback), chained to the start's own.
            raise _own_copy(exc) from exc
        finally:
            self._start_waiters -= 1

    def _start_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.start = None
        if task.cancelled():
            self._set_state(ServerState.STOPPED, when=(ServerState.STARTING,))
            return
        exc = task.exception()
        if exc is None:
            self._start_failures = 0
            return
        if self.state is ServerState.STARTING:
            self.error = exc
            self._set_state(ServerState.FAILED)
            self._start_failures += 1
            # A server that fails at every start must not be relaunched by every request (on a
            # GPU each launch costs minutes): from the second failure in a row, requests fail
            # fast with the last start error for a window that doubles up to the ceiling.
            if self._start_failures >= 2 and self.config.restart_backoff > 0:
                window = min(self.config.restart_backoff * 2 ** (self._start_failures - 2),
                             self.config.restart_backoff_max)
                self._retry_at = time.monotonic() + window
                self.emit("start_backoff", failures=self._start_failures,
                          retry_in=round(window, 3))

    def _backing_off(self) -> BaseException | None:
        """The last start error while the crash-loop backoff window is open, else None."""
        if self.state is ServerState.FAILED and time.monotonic() < self._retry_at:
            return self.error
        return None

    def add_after_ready(self, hook: Callable[[LaunchedServer], Awaitable[None]]) -> None:
        """Run ``await hook(server)`` after every launch and relaunch, once the server answers
        and before the state becomes READY (so before any request is admitted). A failing
        hook fails the start."""
        self._after_ready.append(hook)

    # -- start ------------------------------------------------------------------------
    async def _start(self) -> None:
        if self._tasks.cleanup is not None:  # a crash's cleanup (tree kill, fresh pool) goes first
            await asyncio.wait({self._tasks.cleanup})
            self._tasks.cleanup = None
        relaunch = self._launches > 0
        self._set_state(ServerState.STARTING)
        self.error = None
        if self._reservation is None:
            self._reservation = PortReservation(self.config.host, self.config.port)
            self.base_url = _url(self.config.host, self._reservation.port)
        else:
            self._reservation.check_free()
        # Reported once the port is known to be ours (a taken port fails without a launch).
        self.emit("relaunching" if relaunch else "launching")
        self._launches += 1
        started = time.monotonic()
        process: SupervisedTree
        try:
            if self.config.is_group:
                process = await self._launch_group()
            else:
                process = await self._launch_single()
            for hook in self._after_ready:  # e.g. LoRA adapters again; before any admission
                await hook(self)
        except BaseException as exc:
            # Failed, timed out or cancelled: nothing of the half-started tree may survive.
            if self.process is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.process.kill())
            self._secret_file.remove()
            if isinstance(exc, ServerError):
                self.emit("start_failed", self.pid, error=exc.summary,
                          returncode=exc.returncode)
            raise
        self._set_state(ServerState.READY, event="ready", pid=process.pid,
                        duration=round(time.monotonic() - started, 3))
        self._tasks.exit_watch = asyncio.ensure_future(self._watch_exit(process))
        self._watchdog.start()

    async def _launch_single(self) -> ServerProcess:
        assert self._reservation is not None
        # SGLang missing, unknown parsers, the model download: before anything is spawned.
        extra_env = await check_before_launch(self.model_path, self.config, emit=self.emit)
        env = {**self.config.env, **extra_env}
        secret_path = await self._secret_file.write()
        command = self.config.command(
            self.model_path, port=self._reservation.port, api_key=self.api_key,
            config_file=secret_path,
        )
        process = await ServerProcess.spawn(
            command, env=env, secret=self.api_key, on_phase=self._phase
        )
        self.process = process
        await process.wait_ready(
            health_url=f"{self.base_url}/health",
            client=self.pool.client,
            timeout=self.config.startup_timeout,
        )
        return process

    async def _launch_group(self) -> RouterGroup:
        assert self._reservation is not None
        assert self.api_key is not None
        if not self._worker_reservations:
            self._worker_reservations = [
                PortReservation(self.config.host, None)
                for _ in range(self.config.local_replicas)
            ]
        else:
            for reservation in self._worker_reservations:
                reservation.check_free()
        secret_path = await self._secret_file.write()
        group = RouterGroup(
            self.model_path, self.config, api_key=self.api_key, client=self.pool.client,
            router_port=self._reservation.port, router_url=self.base_url,
            worker_ports=[r.port for r in self._worker_reservations],
            worker_urls=[_url(self.config.host, r.port) for r in self._worker_reservations],
            emit=self.emit, on_phase=self._phase,
            # The router's Prometheus listener: loopback, a free port (theirs is 0.0.0.0:29000).
            metrics=PortReservation(self.config.router_metrics_host,
                                    self.config.router_metrics_port),
            config_file=secret_path,
        )
        self.process = group
        await group.launch(self.config.startup_timeout)
        return group

    def _phase(self, phase: Phase) -> None:
        self.emit("phase", self.pid, phase=phase.name, elapsed=round(phase.elapsed, 3),
                  line=phase.line)

    # -- losing the serving tree ------------------------------------------------------
    async def _watch_exit(self, process: SupervisedTree) -> None:
        # wait() rather than await: cancelling the watch must not cancel `exited` itself.
        await asyncio.wait({process.exited})
        await process.wait_output_closed(0.2)
        self._mark_crashed(process)

    def _mark_crashed(self, process: SupervisedTree) -> None:
        """The process died while serving: FAILED at once (see :meth:`_lose`)."""
        if self.process is not process or self.state not in (ServerState.READY, ServerState.SLEEPING):
            return
        code = process.returncode
        error = ServerCrashedError(
            f"the server (pid {process.pid}) died while serving with {describe_returncode(code)}",
            returncode=code,
            command=process.masked_command,
            log_tail=process.log_tail(),
        )
        self._lose(process, error, "crashed", returncode=code)

    async def _after_crash(self, process: SupervisedTree) -> None:
        await process.kill()  # whatever is left of the tree
        self._secret_file.remove()
        await self._drop_connections()

    async def _drop_connections(self) -> None:
        """Pooled keep-alive connections to a dead server would linger (CLOSE_WAIT) until
        reused or expired: start the next run with a fresh pool instead."""
        await self._renew_pool()

    async def check_hung(self, token: object) -> ServerHungError | None:
        process = token if isinstance(token, SupervisedTree) else None
        if process is None or self.process is not process or self.state is not ServerState.READY:
            return None
        if await self._answers_health(self.config.health_check_timeout):
            return None
        if self.process is not process or self.state is not ServerState.READY:
            return None  # something else (a crash, a stop) got there first
        bound = self.config.health_check_timeout
        error = ServerHungError(
            f"the server (pid {process.pid}) stopped answering: a request timed out and "
            f"/health gave no 200 within {bound:g} s; its tree was killed",
            command=process.masked_command,
            log_tail=process.log_tail(),
        )
        self._lose(process, error, "hung", health_check_timeout=bound)
        return error

    async def recover(self, token: object, exc: BaseException, *, sent: bool) -> Recovery:
        process = token if isinstance(token, SupervisedTree) else None
        if process is not None and process.returncode is None:
            # The connection drops a few ms before the exit is reported: wait for it briefly.
            await asyncio.wait({process.exited}, timeout=0.5)
        if process is None or process.returncode is None:
            return Recovery(resend=not sent)
        self._mark_crashed(process)
        if self.state is ServerState.CLOSED:
            return Recovery(error=ModelClosedError("the model was closed during the request"))
        if not sent:
            return Recovery(resend=True)  # never reached the dead server: relaunch and retry
        return Recovery(error=ServerCrashedError(
            f"the server (pid {process.pid}) died during the request with "
            f"{describe_returncode(process.returncode)}",
            returncode=process.returncode,
            command=process.masked_command,
            log_tail=process.log_tail(),
        ))

    # -- stop -------------------------------------------------------------------------
    def _idle_stop(self) -> bool:
        """Called by the watchdog, synchronously: the admission check and this state change
        happen in one step of the loop, so no request can slip in between. True: stopping,
        or nothing to stop; False: busy, look again later."""
        if self.state is ServerState.SLEEPING and self._tasks.wake is not None:
            return True  # being woken for a request: not idle
        if not self._set_state(ServerState.STOPPING, idle=True,
                               when=(ServerState.READY, ServerState.SLEEPING)):
            # Only the loop changes the state: still READY or SLEEPING means requests in flight.
            return self.state not in (ServerState.READY, ServerState.SLEEPING)
        self._begin_stop("idle")
        return True

    # -- the warm sleep ---------------------------------------------------------------
    def _begin_sleep(self) -> asyncio.Task[bool] | None:
        """READY and idle → SLEEPING and the memory release started; None when the server is
        not ready or has requests in flight. Like the idle stop, the check and the state
        change are one step, under the admission lock, so no request slips in between."""
        if not self._set_state(ServerState.SLEEPING, when=(ServerState.READY,), idle=True):
            return None
        self._tasks.sleep = asyncio.ensure_future(self._release_memory())
        return self._tasks.sleep

    def _fall_asleep(self) -> bool:
        """The watchdog's hook after ``sleep_timeout`` idle seconds, synchronously. True:
        asleep, or nothing to put to sleep; False: busy, look again shortly."""
        return self._begin_sleep() is not None or self.state is not ServerState.READY

    async def sleep(self) -> bool:
        """The warm sleep now, as ``sleep_timeout`` would: True once the server's memory is
        released (the process kept; the next request wakes it). False when it is not ready
        and idle, or the release failed (it then stays awake and serving)."""
        task = self._begin_sleep()
        if task is None and self.state is ServerState.SLEEPING:
            task = self._tasks.sleep  # already falling asleep: the same release
            if task is None:
                return True
        return await asyncio.shield(task) if task is not None else False

    async def _memory_call(self, path: str) -> None:
        """POST ``path`` to every server of the run (each worker of a group), admin key first."""
        for url in self.direct_urls():
            headers = _http.bearer_headers(self.admin_key or self.worker_api_key(url))
            response = await self.pool.client.post(f"{url}{path}", json={}, headers=headers,
                                                   timeout=self.config.startup_timeout)
            check_response(response)

    async def _release_memory(self) -> bool:
        started = time.monotonic()
        try:
            await self._memory_call("/release_memory_occupation")
        except (SGLangError, _http.httpx.HTTPError) as exc:  # it keeps its memory and serves
            logger.warning("the warm sleep failed, the server stays awake: %s", exc)
            self._set_state(ServerState.READY, when=(ServerState.SLEEPING,))
            return False
        self.emit("sleeping", self.pid, duration=round(time.monotonic() - started, 3))
        return True

    async def _wake(self) -> None:
        """Resume the memory of a sleeping server, then admit again (single flight)."""
        started = time.monotonic()
        try:
            sleeping = self._tasks.sleep
            released = await asyncio.shield(sleeping) if sleeping else False
            if released and self.state is ServerState.SLEEPING:
                await self._memory_call("/resume_memory_occupation")
        except (SGLangError, _http.httpx.HTTPError) as exc:
            # A server that cannot take its memory back is no use: replace it.
            error = ServerCrashedError(f"the server could not resume its memory: {exc}")
            process = self.process
            if process is not None and self.state is ServerState.SLEEPING:
                self._lose(process, error)
            raise error from exc
        finally:
            self._tasks.wake = self._tasks.sleep = None
        self._set_state(ServerState.READY, when=(ServerState.SLEEPING,))
        self._watchdog.touch()
        # Also when a failed release had kept it awake: the waiting request goes on either way.
        self.emit("awake", self.pid, duration=round(time.monotonic() - started, 3))

    def _begin_stop(self, reason: str) -> asyncio.Task[None]:
        if self._tasks.stop is None:
            # From READY or SLEEPING (the idle stop has already moved to STOPPING).
            self._set_state(ServerState.STOPPING, when=(ServerState.READY, ServerState.SLEEPING))
            self._watchdog.stop()
            self._tasks.stop = asyncio.ensure_future(self._stop(reason))
        return self._tasks.stop

    async def _stop(self, reason: str) -> None:
        process = self.process
        code: int | None = None
        started = time.monotonic()
        try:
            if process is not None:
                code = await process.terminate(self.config.shutdown_timeout)
                await self._drop_connections()
        except BaseException:
            self._end_stop()
            self._set_state(ServerState.STOPPED, when=(ServerState.STOPPING,))
            raise
        self._end_stop()
        self._set_state(
            ServerState.STOPPED, when=(ServerState.STOPPING,),
            event=None if process is None else "idle_stopped" if reason == "idle" else "stopped",
            pid=process.pid if process is not None else None,
            returncode=code, duration=round(time.monotonic() - started, 3),
        )

    def _end_stop(self) -> None:
        self._secret_file.remove()
        if self._tasks.exit_watch is not None:
            self._tasks.exit_watch.cancel()
            self._tasks.exit_watch = None
        self._tasks.stop = None

    async def stop(self) -> None:
        """Stop the server now (it relaunches on the next request)."""
        if self._tasks.start is not None:
            self._tasks.start.cancel()
            await _wait_through_cancellation(self._tasks.start)
        if self.state in (ServerState.READY, ServerState.SLEEPING) or self._tasks.stop is not None:
            await asyncio.shield(self._begin_stop("stop"))
        elif self.process is not None and self.process.returncode is None:
            await self.process.kill()

    async def aclose(self) -> None:
        if self.state is ServerState.CLOSED:
            return
        try:
            await self.stop()
        finally:
            # (unless another aclose() got here first)
            self._set_state(ServerState.CLOSED, when=_CLOSABLE)
            self._watchdog.stop()
            if self._tasks.exit_watch is not None:
                self._tasks.exit_watch.cancel()
            for reservation in [self._reservation, *self._worker_reservations]:
                if reservation is not None:
                    reservation.close()
            self._secret_file.remove()
            await self._close_pool()
            self.emit("closed")

    # -- workers of a router group (delegates to RouterGroup) ---------------------------------
    def _group(self) -> RouterGroup:
        if not isinstance(self.process, RouterGroup) or self.state is not ServerState.READY:
            raise ServerUnavailableError("workers are managed on a running router group")
        return self.process

    async def add_worker(self, url: str, api_key: str | None = None) -> str:
        """Route to the worker at *url* too (not launched by the library); its id."""
        return await self._group().add_worker(url, api_key)

    async def remove_worker(self, worker_id: str) -> None:
        """Drain the worker out of rotation (a local one is then stopped)."""
        await self._group().remove_worker(worker_id)

    def workers(self) -> list[WorkerInfo]:
        """The group's workers: id, URL, local or remote, healthy, in flight."""
        return self._group().workers()
