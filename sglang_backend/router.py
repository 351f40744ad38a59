"""Scale-out: N SGLang workers behind the real sglang-router, supervised as one unit.

``ServerConfig(replicas=N, router_policy=...)`` makes :class:`~sglang_backend.server.LaunchedServer`
launch a :class:`RouterGroup` instead of a single server:

* N workers, each on its own reserved loopback port, GPUs split with
  ``base_gpu_id = (config.base_gpu_id or 0) + i * (config.tp_size or 1)``, all with the same API key;
* once every worker is ready, ``python -m sglang_router.launch_router --worker-urls … --policy …``
  on the model's own port (loopback, same key); the group is ready when the router lists every
  worker as healthy on ``GET /workers``;
* the router is the group's lifeline: if it dies, the group has crashed (the model relaunches
  it on the next request). A worker that dies is reported (``worker_crashed``), relaunched on
  the same port and re-registered with the router (``POST /workers``) if the router dropped it
  (``worker_relaunched``) — without touching the other workers;
* stop and orphan-proofing apply to every process of the group (each is registered with the
  reaper; pids are tracked, never names — the router re-titles itself ``sglang::router``).

The library drives SGLang's own balancer; it does not balance requests itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _http
from ._process import Phase, ServerProcess
from .config import ServerConfig
from .errors import ServerStartError, ServerStartTimeout

__all__ = ["DEFAULT_ROUTER_COMMAND", "RouterGroup"]

logger = logging.getLogger("sglang_backend.server")

DEFAULT_ROUTER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "sglang_router.launch_router")
_RELAUNCH_ATTEMPTS = 3


@dataclass
class _Worker:
    index: int
    port: int
    url: str
    gpu: int | None
    process: ServerProcess | None = None


class RouterGroup:
    """Workers + router with the surface of one :class:`ServerProcess` (pid = the router's)."""

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
    ) -> None:
        self._model_path = model_path
        self._config = config
        self._api_key = api_key
        self._client = client
        self._router_port = router_port
        self._router_url = router_url
        self._emit = emit
        self._on_phase = on_phase
        tp = config.tp_size or 1
        base = config.base_gpu_id or 0
        self.workers = [
            _Worker(i, port, url, base + i * tp if (config.base_gpu_id is not None or i) else None)
            for i, (port, url) in enumerate(zip(worker_ports, worker_urls, strict=True))
        ]
        self.router: ServerProcess | None = None
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    # -- the ServerProcess surface ----------------------------------------------------------
    @property
    def pid(self) -> int:
        if self.router is not None:
            return self.router.pid
        first = self.workers[0].process
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
        first = self.workers[0].process
        return first.masked_command if first is not None else []

    @property
    def pids(self) -> list[int]:
        """Every live process of the group: router first, then workers."""
        procs = [self.router] + [w.process for w in self.workers]
        return [p.pid for p in procs if p is not None and p.returncode is None]

    def log_tail(self, lines: int = 20) -> list[str]:
        return self.router.log_tail(lines) if self.router is not None else []

    async def wait_output_closed(self, timeout: float = 0.5) -> None:
        if self.router is not None:
            await self.router.wait_output_closed(timeout)

    # -- launch -------------------------------------------------------------------------------
    async def launch(self, timeout: float) -> None:
        """Launch every worker, wait for all, then the router; raise on any failure."""
        deadline = time.monotonic() + timeout
        await asyncio.gather(*(self._launch_worker(w, deadline) for w in self.workers))
        await self._launch_router(deadline)
        self._supervisors = [
            asyncio.ensure_future(self._supervise(worker)) for worker in self.workers
        ]

    async def _launch_worker(self, worker: _Worker, deadline: float) -> None:
        command = self._config.resolved_launch_command + self._config.server_args(
            self._model_path, port=worker.port, api_key=self._api_key, base_gpu_id=worker.gpu
        )
        worker.process = await ServerProcess.spawn(
            command, env=self._config.env, secret=self._api_key,
            on_phase=self._on_phase if worker.index == 0 else None, name=f"worker {worker.index}",
        )
        await worker.process.wait_ready(
            health_url=f"{worker.url}/health", client=self._client,
            timeout=max(deadline - time.monotonic(), 0.001), name=f"worker {worker.index}",
        )

    def router_command(self) -> list[str]:
        command = list(self._config.router_command or DEFAULT_ROUTER_COMMAND)
        command += ["--worker-urls", *(w.url for w in self.workers)]
        if self._config.router_policy is not None:
            command += ["--policy", self._config.router_policy]
        command += ["--host", self._config.host, "--port", str(self._router_port),
                    f"--api-key={self._api_key}", "--log-level", "warn"]
        return command

    async def _launch_router(self, deadline: float) -> None:
        router = await ServerProcess.spawn(
            self.router_command(), env=self._config.env, secret=self._api_key, name="router"
        )
        self.router = router
        router.exited.add_done_callback(self._router_exited)
        remaining = max(deadline - time.monotonic(), 0.001)
        waiter = asyncio.ensure_future(self._wait_workers_registered())
        done, _ = await asyncio.wait({waiter, router.exited}, timeout=remaining,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
            await router.wait_output_closed()
            if router.exited in done:
                raise ServerStartError(
                    f"the router exited during start with return code {router.returncode}",
                    returncode=router.returncode, command=router.masked_command,
                    log_tail=router.log_tail(),
                )
            raise ServerStartTimeout(
                "the router did not list every worker as healthy within startup_timeout",
                command=router.masked_command, log_tail=router.log_tail(),
            )
        waiter.result()

    def _router_exited(self, task: asyncio.Task[int]) -> None:
        if not self._exited.done():
            if task.cancelled():
                self._exited.cancel()
            else:
                self._exited.set_result(task.result())

    async def registered_workers(self) -> dict[str, bool]:
        """The router's view: worker URL -> healthy."""
        response = await self._client.get(
            f"{self._router_url}/workers", headers=self._auth(), timeout=5.0
        )
        response.raise_for_status()
        listed: list[dict[str, Any]] = response.json().get("workers", [])
        return {str(w.get("url")): bool(w.get("is_healthy")) for w in listed}

    async def _wait_workers_registered(self, urls: Sequence[str] | None = None) -> None:
        wanted = set(urls or (w.url for w in self.workers))
        delay = 0.05
        while True:
            with contextlib.suppress(_http.httpx.HTTPError, ValueError):
                seen = await self.registered_workers()
                if all(seen.get(url) for url in wanted):
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}

    # -- worker supervision ----------------------------------------------------------------
    async def _supervise(self, worker: _Worker) -> None:
        while not self._stopping:
            process = worker.process
            assert process is not None
            # wait() rather than await: cancelling this supervisor must not cancel `exited`.
            await asyncio.wait({process.exited})
            if self._stopping:
                return
            code = process.exited.result()
            self._emit("worker_crashed", process.pid, worker=worker.index, url=worker.url,
                       returncode=code)
            await process.kill()  # whatever is left of its tree
            for attempt in range(_RELAUNCH_ATTEMPTS):
                try:
                    await self._launch_worker(
                        worker, time.monotonic() + self._config.startup_timeout
                    )
                    await self._reregister(worker)
                except (ServerStartError, ServerStartTimeout) as exc:
                    self._emit("worker_relaunch_failed", None, worker=worker.index,
                               error=exc.summary, attempt=attempt + 1)
                    if worker.process is not None:
                        await worker.process.kill()
                    await asyncio.sleep(2**attempt)
                    continue
                assert worker.process is not None
                self._emit("worker_relaunched", worker.process.pid, worker=worker.index,
                           url=worker.url)
                break
            else:
                return  # gave up on this worker; the others keep serving

    async def _reregister(self, worker: _Worker) -> None:
        """Make sure the router routes to the relaunched worker again."""
        with contextlib.suppress(_http.httpx.HTTPError, ValueError):
            if worker.url in await self.registered_workers():
                return
        response = await self._client.post(
            f"{self._router_url}/workers",
            json={"url": worker.url, "api_key": self._api_key},
            headers=self._auth(), timeout=10.0,
        )
        if response.status_code >= 400:
            logger.warning("router refused to re-register %s: %s %s", worker.url,
                           response.status_code, response.text[:200])

    # -- stop ----------------------------------------------------------------------------------
    async def terminate(self, grace: float) -> int:
        """Stop the router and every worker (SIGTERM → grace → SIGKILL), concurrently."""
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        members = [p for p in [self.router] + [w.process for w in self.workers] if p is not None]
        codes = await asyncio.gather(*(p.terminate(grace) for p in members))
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        if not self._exited.done():
            self._exited.set_result(codes[0] if codes else 0)
        return codes[0] if self.router is not None and codes else 0

    async def kill(self) -> int:
        return await self.terminate(0)
