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

This module is :class:`LaunchedServer`, one state machine; it is over 500 lines because that
machine has start, crash, hang, stop and the warm sleep, each a few methods. The states, the
events and the :class:`Backend` interface are in ``_backend``; connect mode is ``_remote``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from . import _http
from ._backend import (
    Backend,
    EventCallback,
    PortReservation,
    Recovery,
    ServerEvent,
    ServerState,
    log_failure,
    own_copy,
    server_url,
)
from ._diagnose import check_before_launch
from ._process import Phase, ServerProcess, describe_returncode
from ._remote import RemoteServer
from ._secrets import PrivateArgsFile
from ._supervised import SupervisedTree
from ._translate import check_response
from .config import ServerConfig
from .errors import (
    ModelClosedError,
    ServerCrashedError,
    ServerError,
    ServerHungError,
    ServerUnavailableError,
    SGLangError,
)
from .router import RouterGroup, WorkerInfo
from .watchdog import DirectTraffic, InactivityWatchdog

# The backend's names are re-exported: ``from sglang_backend.server import ServerState`` is the
# documented spelling.
__all__ = ["Backend", "EventCallback", "LaunchedServer", "PortReservation", "Recovery",
           "RemoteServer", "ServerEvent", "ServerState"]

logger = logging.getLogger("sglang_backend.server")


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

    def _poolserver_url(self) -> str:
        return self.base_url or server_url(self.config.host, self.config.port or 0)

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
        self._tasks.cleanup.add_done_callback(log_failure)

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
                raise own_copy(last) from last
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
            raise own_copy(exc) from exc
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
            self.base_url = server_url(self.config.host, self._reservation.port)
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
            worker_urls=[server_url(self.config.host, r.port) for r in self._worker_reservations],
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
        if task is None:
            if self.state is not ServerState.SLEEPING:
                return False
            task = self._tasks.sleep  # already asleep, or falling asleep: the same release
            if task is None:
                return True
        return await asyncio.shield(task)

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
