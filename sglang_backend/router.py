"""Scale-out: workers (local and elsewhere) behind a real router, supervised as one unit.

``ServerConfig(replicas=N, worker_urls=[...], pd=..., router=...)`` makes
:class:`~sglang_backend.server.LaunchedServer` launch a :class:`RouterGroup`:

* the router is smg (the SGLang Model Gateway, ``pip install smg``) or sglang-router 0.3.x
  (``router=None``: smg when installed). It listens on the model's port with the group's key,
  which reaches it outside argv (:mod:`sglang_backend._router_launch`); its Prometheus
  listener is on loopback on a reserved free port, never the routers' default ``0.0.0.0:29000``,
  so several groups coexist on one host;
* local workers each get a reserved loopback port and their own GPUs (``base_gpu_id + i *
  tp_size``); workers elsewhere (``worker_urls``, :meth:`RouterGroup.add_worker`) are routed
  to, health-checked and reported, never launched;
* health checks every second (2 failures → out of rotation, 1 success → back) so a dead worker
  leaves rotation within seconds. The router must not *remove* unhealthy workers (smg:
  ``--no-remove-unhealthy-workers``): a dead local worker is relaunched on the same URL and
  comes back into rotation by itself (re-registered if a router dropped it anyway);
* ready = the router's ``/readiness`` (smg) answers 200 and ``GET /workers`` lists every local
  worker healthy. The router is the group's lifeline: if it dies, the group has crashed;
* stop and orphan-proofing apply to every process (pids are tracked, never names: the routers
  re-title themselves ``smg::router`` / ``sglang::router``).

What routers do not route (smg answers 404 for ``/tokenize``, ``/abort_request``,
``/metrics``) goes to the workers directly: :meth:`RouterGroup.direct_urls` names the healthy
ones, :meth:`RouterGroup.metrics_urls` every metrics endpoint. The library drives the
router's balancer; it does not balance requests itself.

Over 500 lines: one class, the group's whole life (launch, readiness, a worker's crash and
relaunch, workers added and drained), whose steps share its locks and its member table.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import math
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import _http
from ._health import poll_until
from ._process import Phase, ServerProcess
from ._router_launch import KEY_ENV
from ._supervised import LOG_TAIL_LINES, SupervisedTree
from ._topology import normalize_worker_url
from .config import RouterKind, ServerConfig
from .errors import ServerStartError, ServerStartTimeout, ServerUnavailableError

__all__ = ["RouterGroup", "WorkerInfo", "resolve_router"]

logger = logging.getLogger("sglang_backend.server")

_RELAUNCH_ATTEMPTS = 3
_POLL_INTERVAL = 1.0
# Fast enough that a dead worker (connection refused) leaves rotation in ~2 s; the timeout
# stays generous because SGLang's /health runs a generation (≥ 1 s, longer under load).
_HEALTH_FLAGS = [
    "--health-check-interval-secs", "1", "--health-failure-threshold", "2",
    "--health-success-threshold", "1", "--health-check-timeout-secs", "5",
    "--worker-startup-check-interval", "1",
]  # fmt: skip
_SMG_ONLY_FLAGS = [
    # Keep unhealthy workers listed: the library relaunches local ones on the same URL.
    "--no-remove-unhealthy-workers",
    # HTTP workers tokenize themselves; autoload would fetch a tokenizer from the Hub.
    "--disable-tokenizer-autoload",
]


def resolve_router(kind: RouterKind | None) -> RouterKind:
    """``None`` → smg when it is installed, else sglang-router."""
    if kind is not None:
        return kind
    return "smg" if importlib.util.find_spec("smg") is not None else "sglang-router"


class _Reservation(Protocol):
    port: int

    def close(self) -> None: ...


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as the group sees it (the router's view where it has one)."""

    id: str
    """The router's worker id (smg: a UUID); pass it to ``remove_worker``."""
    url: str
    local: bool
    """Launched and supervised by the library (False: a worker elsewhere)."""
    healthy: bool
    inflight: int | None
    """Requests in flight on the worker, as the router counts them (None: not reported)."""


@dataclass
class _Member:
    url: str
    api_key: str
    local: bool
    index: int = -1
    port: int = 0
    gpu: int | None = None
    process: ServerProcess | None = None
    supervisor: asyncio.Task[None] | None = None
    router_id: str | None = None
    healthy: bool | None = None  # None: the router has not said yet
    load: int | None = None
    removing: bool = False


class RouterGroup(SupervisedTree):
    """Workers + router, supervised as one tree (pid = the router's; the router is the
    lifeline: its exit is the group's)."""

    def __init__(
        self,
        model_path: str,
        config: ServerConfig,
        *,
        api_key: str,
        client: _http.httpx.AsyncClient,
        router_port: int,
        router_url: str,
        worker_ports: Sequence[int],
        worker_urls: Sequence[str],
        emit: Callable[..., None],
        on_phase: Callable[[Phase], None] | None = None,
        metrics: _Reservation | None = None,
        config_file: str | None = None,
    ) -> None:
        self._model_path = model_path
        self._config = config
        self._api_key = api_key
        self._client = client
        self._router_port = router_port
        self._router_url = router_url
        self._emit = emit
        self._on_phase = on_phase
        self._metrics = metrics
        self._config_file = config_file  # the workers' private --config file (key not in argv)
        self.kind: RouterKind = resolve_router(config.router)
        tp = config.tp_size or 1
        base = config.base_gpu_id or 0
        self.members: list[_Member] = [
            _Member(url, api_key, True, index=i, port=port,
                    gpu=base + i * tp if (config.base_gpu_id is not None or i) else None)
            for i, (port, url) in enumerate(zip(worker_ports, worker_urls, strict=True))
        ]
        remote = config.pd.worker_urls() if config.pd is not None else config.worker_urls
        self.members += [_Member(url, api_key, False) for url in remote]
        self.router: ServerProcess | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopping = False
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def local_workers(self) -> list[_Member]:
        return [m for m in self.members if m.local]

    # -- the supervised tree ------------------------------------------------------------------
    @property
    def pid(self) -> int:
        if self.router is not None:
            return self.router.pid
        first = next((m.process for m in self.local_workers if m.process), None)
        return first.pid if first is not None else -1

    @property
    def returncode(self) -> int | None:
        return self.router.returncode if self.router is not None else None

    @property
    def exited(self) -> asyncio.Future[int]:
        """Completes when the router exits: the group's lifeline."""
        return self._exited

    @property
    def masked_command(self) -> list[str]:
        if self.router is not None:
            return self.router.masked_command
        first = next((m.process for m in self.local_workers if m.process), None)
        return first.masked_command if first is not None else []

    @property
    def pids(self) -> list[int]:
        """Every live process of the group: router first, then local workers."""
        procs = [self.router] + [m.process for m in self.local_workers]
        return [p.pid for p in procs if p is not None and p.returncode is None]

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        return self.router.log_tail(lines) if self.router is not None else []

    async def wait_output_closed(self, timeout: float = 0.5) -> None:
        if self.router is not None:
            await self.router.wait_output_closed(timeout)

    # -- launch -------------------------------------------------------------------------------
    async def launch(self, timeout: float) -> None:
        """Launch every local worker, wait for all, then the router; raise on any failure."""
        deadline = time.monotonic() + timeout
        await asyncio.gather(*(self._launch_worker(m, deadline) for m in self.local_workers))
        await self._launch_router(deadline)
        for member in self.local_workers:
            member.supervisor = asyncio.ensure_future(self._supervise(member))
        self._monitor = asyncio.ensure_future(self._watch_health())

    async def _launch_worker(self, member: _Member, deadline: float) -> None:
        command = self._config.resolved_launch_command + self._config.server_args(
            self._model_path, port=member.port, api_key=self._api_key, base_gpu_id=member.gpu,
            config_file=self._config_file,
        )
        member.process = await ServerProcess.spawn(
            command, env=self._config.env, secret=self._api_key,
            on_phase=self._on_phase if member.index == 0 else None, name=f"worker {member.index}",
        )
        await member.process.wait_ready(
            health_url=f"{member.url}/health", client=self._client,
            timeout=max(deadline - time.monotonic(), 0.001), name=f"worker {member.index}",
        )

    def router_args(self, metrics_port: int) -> list[str]:
        """The router's flags (no key: see :meth:`router_command`)."""
        config = self._config
        if config.pd is not None:
            args = config.pd.router_args()
        else:
            args = ["--worker-urls", *(m.url for m in self.members)]
        if config.router_policy is not None:
            args += ["--policy", config.router_policy]
        args += ["--host", config.host, "--port", str(self._router_port),
                 "--prometheus-host", config.router_metrics_host,
                 "--prometheus-port", str(metrics_port), *_HEALTH_FLAGS, "--log-level", "warn",
                 # Drain within our own grace (their default, 180 s, outlives shutdown_timeout).
                 "--shutdown-grace-period-secs",
                 str(max(1, math.ceil(config.shutdown_timeout) - 1))]
        if self.kind == "smg":
            args += _SMG_ONLY_FLAGS
        return args

    def router_command(self, metrics_port: int) -> tuple[list[str], dict[str, str]]:
        """(argv, extra environment). The library's launcher takes the key from the
        environment; a user-given ``router_command`` gets it in argv (masked in logs)."""
        args = self.router_args(metrics_port)
        if self._config.router_command is not None:
            return [*self._config.router_command, *args, f"--api-key={self._api_key}"], {}
        command = [sys.executable, "-m", "sglang_backend._router_launch", self.kind, *args]
        return command, {KEY_ENV: self._api_key}

    @property
    def metrics_port(self) -> int:
        return self._metrics.port if self._metrics is not None else 29000

    async def _launch_router(self, deadline: float) -> None:
        command, env = self.router_command(self.metrics_port)
        router = await ServerProcess.spawn(
            command, env={**self._config.env, **env}, secret=self._api_key, name="router"
        )
        self.router = router
        router.exited.add_done_callback(self._router_exited)
        remaining = max(deadline - time.monotonic(), 0.001)
        waiter = asyncio.ensure_future(self._wait_ready())
        done, _ = await asyncio.wait({waiter, router.exited}, timeout=remaining,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
            await router.wait_output_closed()
            if router.exited in done:
                raise ServerStartError(
                    f"the router ({self.kind}) exited during start with return code"
                    f" {router.returncode}",
                    returncode=router.returncode, command=router.masked_command,
                    log_tail=router.log_tail(),
                )
            raise ServerStartTimeout(
                "the router did not list every local worker as healthy within startup_timeout",
                command=router.masked_command, log_tail=router.log_tail(),
            )
        waiter.result()

    def _router_exited(self, task: asyncio.Future[int]) -> None:
        if not self._exited.done():
            if task.cancelled():
                self._exited.cancel()
            else:
                self._exited.set_result(task.result())

    async def _ready_once(self) -> bool:
        try:
            if self.kind == "smg":
                reply = await self._client.get(f"{self._router_url}/readiness", timeout=5.0)
                if reply.status_code != 200:
                    return False
            await self.refresh()
        except (_http.httpx.HTTPError, ValueError):
            return False
        if not all(m.healthy for m in self.local_workers):
            return False
        # Remote-only groups need one healthy worker; remote ones down at start are reported.
        return any(m.healthy for m in self.members)

    async def _wait_ready(self) -> None:
        await poll_until(self._ready_once, first=0.05, cap=0.5)
        for member in self.members:
            if not member.local and not member.healthy:
                self._emit("worker_unhealthy", None, url=member.url, local=False)

    def _auth(self) -> dict[str, str]:
        return _http.bearer_headers(self._api_key)

    # -- the router's view --------------------------------------------------------------------
    async def registered_workers(self) -> dict[str, dict[str, Any]]:
        """The router's ``GET /workers``: worker URL -> its entry."""
        response = await self._client.get(
            f"{self._router_url}/workers", headers=self._auth(), timeout=5.0
        )
        response.raise_for_status()
        listed: list[dict[str, Any]] = response.json().get("workers", [])
        return {str(w.get("url")).rstrip("/"): w for w in listed}

    async def refresh(self) -> None:
        """Update every member's id, health and load from the router's listing."""
        seen = await self.registered_workers()
        for member in self.members:
            entry = seen.get(member.url)
            if entry is None:
                member.healthy = False if member.healthy is not None else None
                continue
            member.router_id = str(entry.get("id") or member.url)
            member.healthy = bool(entry.get("is_healthy"))
            load = entry.get("load")
            member.load = load if isinstance(load, int) else None

    async def _watch_health(self) -> None:
        """Poll the router; report remote workers going unhealthy and coming back."""
        while not self._stopping:
            await asyncio.sleep(_POLL_INTERVAL)
            before = {id(m): m.healthy for m in self.members}
            try:
                await self.refresh()
            except (_http.httpx.HTTPError, ValueError) as exc:
                logger.debug("router listing failed: %s", exc)
                continue
            for member in self.members:
                was = before.get(id(member))
                if member.local or member.removing or was is None or was == member.healthy:
                    continue
                kind = "worker_healthy" if member.healthy else "worker_unhealthy"
                self._emit(kind, None, url=member.url, local=False)

    # -- what routers do not route ------------------------------------------------------------
    def direct_urls(self) -> list[str]:
        """Base URLs of the healthy workers (local and remote), for what routers do not
        route: token counting goes to one of them, ``/abort_request`` to all."""
        return [m.url for m in self.members if self._usable(m)]

    def worker_api_key(self, url: str) -> str:
        """The key to send to the worker at *url* directly."""
        for member in self.members:
            if member.url == url:
                return member.api_key
        return self._api_key

    def metrics_urls(self) -> dict[str, str]:
        """Every Prometheus endpoint of the group: ``"router"`` and each worker's URL."""
        host = self._config.router_metrics_host
        host = f"[{host}]" if ":" in host else host
        urls = {"router": f"http://{host}:{self.metrics_port}/metrics"}
        urls.update({m.url: f"{m.url}/metrics" for m in self.members if not m.removing})
        return urls

    @staticmethod
    def _usable(member: _Member) -> bool:
        if member.removing:
            return False
        if member.local and (member.process is None or member.process.returncode is not None):
            return False
        return member.healthy is not False

    # -- workers at run time --------------------------------------------------------------------
    def workers(self) -> list[WorkerInfo]:
        """Every worker: id, URL, local or remote, healthy, in flight (as last polled)."""
        return [
            WorkerInfo(m.router_id or m.url, m.url, m.local, self._usable(m), m.load)
            for m in self.members if not m.removing
        ]

    async def add_worker(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> str:
        """Put the worker at *url* (not launched by the library) into rotation; return its id.

        The router registers it in the background (smg answers 202); this waits until the
        router lists it, then it is health-checked and reported like the configured ones.
        """
        url = normalize_worker_url(url)
        if any(m.url == url and not m.removing for m in self.members):
            raise ValueError(f"{url} is already a worker of this group")
        key = api_key if api_key is not None else self._api_key
        response = await self._client.post(
            f"{self._router_url}/workers", json={"url": url, "api_key": key},
            headers=self._auth(), timeout=10.0,
        )
        if response.status_code >= 400:
            raise ServerUnavailableError(
                f"the router refused to add {url}: {response.status_code} {response.text[:300]}"
            )
        member = _Member(url, key, False)
        self.members.append(member)

        async def listed() -> bool:
            with contextlib.suppress(_http.httpx.HTTPError, ValueError):
                await self.refresh()
            return member.router_id is not None

        if not await poll_until(listed, first=0.2, cap=0.2, timeout=timeout):
            self.members.remove(member)
            raise ServerUnavailableError(f"the router did not list {url} within {timeout} s")
        assert member.router_id is not None
        return member.router_id

    async def remove_worker(self, worker_id: str, timeout: float = 60.0) -> None:
        """Take a worker out of rotation: the router drains it, then a local one is stopped."""
        member = next(
            (m for m in self.members if worker_id in (m.router_id, m.url) and not m.removing),
            None,
        )
        if member is None:
            raise ValueError(f"no worker {worker_id!r} in this group")
        member.removing = True  # out of direct_urls() and the supervisor's care from now on
        if member.supervisor is not None:
            member.supervisor.cancel()
        try:
            ident = urllib.parse.quote(member.router_id or member.url, safe="")
            response = await self._client.delete(
                f"{self._router_url}/workers/{ident}", headers=self._auth(), timeout=10.0
            )
            if response.status_code >= 400 and response.status_code != 404:
                raise ServerUnavailableError(
                    f"the router refused to remove {member.url}:"
                    f" {response.status_code} {response.text[:300]}"
                )

            async def drained() -> bool:  # DELETE answers 202; draining follows
                with contextlib.suppress(_http.httpx.HTTPError, ValueError):
                    return member.url not in await self.registered_workers()
                return False

            if not await poll_until(drained, first=0.2, cap=0.2, timeout=timeout):
                raise ServerUnavailableError(
                    f"the router still lists {member.url} after {timeout} s"
                )
        except BaseException:
            member.removing = False
            raise
        if member.process is not None:
            await member.process.terminate(self._config.shutdown_timeout)
        self.members.remove(member)
        self._emit("worker_removed", None, url=member.url, local=member.local)

    # -- local worker supervision ---------------------------------------------------------------
    async def _supervise(self, member: _Member) -> None:
        while not self._stopping and not member.removing:
            process = member.process
            assert process is not None
            # wait() rather than await: cancelling this supervisor must not cancel `exited`.
            await asyncio.wait({process.exited})
            if self._stopping or member.removing:
                return
            code = process.exited.result()
            self._emit("worker_crashed", process.pid, worker=member.index, url=member.url,
                       returncode=code)
            await process.kill()  # whatever is left of its tree
            for attempt in range(_RELAUNCH_ATTEMPTS):
                try:
                    await self._launch_worker(
                        member, time.monotonic() + self._config.startup_timeout
                    )
                    await self._reregister(member)
                except (ServerStartError, ServerStartTimeout) as exc:
                    self._emit("worker_relaunch_failed", None, worker=member.index,
                               error=exc.summary, attempt=attempt + 1)
                    if member.process is not None:
                        await member.process.kill()
                    await asyncio.sleep(2**attempt)
                    continue
                assert member.process is not None
                self._emit("worker_relaunched", member.process.pid, worker=member.index,
                           url=member.url)
                break
            else:
                return  # gave up on this worker; the others keep serving

    async def _reregister(self, member: _Member) -> None:
        """Make sure the router routes to the relaunched worker again."""
        with contextlib.suppress(_http.httpx.HTTPError, ValueError):
            if member.url in await self.registered_workers():
                return
        response = await self._client.post(
            f"{self._router_url}/workers",
            json={"url": member.url, "api_key": member.api_key},
            headers=self._auth(), timeout=10.0,
        )
        if response.status_code >= 400:
            logger.warning("router refused to re-register %s: %s %s", member.url,
                           response.status_code, response.text[:200])

    # -- stop ----------------------------------------------------------------------------------
    async def terminate(self, grace: float) -> int:
        """Stop the router and every local worker (SIGTERM → grace → SIGKILL), concurrently."""
        self._stopping = True
        tasks = [m.supervisor for m in self.members if m.supervisor is not None]
        if self._monitor is not None:
            tasks.append(self._monitor)
        for task in tasks:
            task.cancel()
        members = [p for p in [self.router] + [m.process for m in self.local_workers]
                   if p is not None]
        codes = await asyncio.gather(*(p.terminate(grace) for p in members))
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._metrics is not None:
            self._metrics.close()
        if not self._exited.done():
            self._exited.set_result(codes[0] if codes else 0)
        return codes[0] if self.router is not None and codes else 0
