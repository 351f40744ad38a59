"""Many models on one machine: :class:`ModelPool` loads, swaps and evicts them.

Each member is an ordinary :class:`~sglang_backend.model.AsyncSGLangModel`; the pool decides
*when* it may be started and *which* idle member is stopped to make room for it::

    pool = ModelPool(max_loaded=2)
    pool.add("small", "Qwen/Qwen2.5-0.5B-Instruct", pinned=True)
    pool.add("large", "Qwen/Qwen2.5-7B-Instruct", server=ServerConfig(tp_size=2))
    async with pool:
        reply = await pool.model("large").run(messages)   # loads it, evicting if needed

Rules (all decisions are taken on the event loop with no ``await`` between a check and the
state change it justifies):

* **Room.** A member may load when, counting every member that is loaded, loading or being
  evicted: at most ``max_loaded`` are resident; at most one of each ``group``; and on each
  GPU the declared memory fractions (``memory=``) sum to at most 1.0. Members whose GPU sets
  are disjoint never compete for memory.
* **Eviction.** To make room the pool stops the least recently used member that conflicts,
  is not ``pinned`` and has nothing in flight (no request, no open stream:
  ``model.server.inflight``). A member added with ``evict="sleep"`` is put to the warm sleep
  instead (its GPU memory released, its process kept: it wakes in seconds, not minutes; it
  is stopped if SGLang refuses the sleep). A sleeping member counts as not resident.
  If none can go, the newcomer waits; at most ``max_waiting``
  requests wait (:class:`PoolQueueFullError` past it), each at most ``wait_timeout`` seconds
  (:class:`PoolTimeoutError`).
* **One cold start at a time** per GPU set (``serial_starts="gpus"``: members sharing a GPU
  start one after the other, in arrival order), per pool (``"pool"``) or unrestricted
  (``"none"``).
* **Admission.** A request through a handle (:meth:`ModelPool.model`) holds a lease of its
  model from the moment the pool admits it: the model cannot idle-stop or be evicted under
  it. A member's own ``inactivity_timeout`` still stops it when idle; the pool notices.

Pool events reach ``on_event`` as :class:`~sglang_backend.server.ServerEvent` with
``detail["model"]`` set to the member's name: ``queued``, ``loading``, ``loaded``
(``duration``, ``waited``, ``woke``: True when it was a wake from the warm sleep),
``load_failed``, ``evicting``, ``evicted`` (``reason``, ``for_model``, ``duration``,
``how``: ``"stop"`` or ``"sleep"``), ``unloaded`` (the member stopped on its own: idle or crash),
and every event of the members' own servers, tagged the same way.

Over 500 lines: the policy is one class on purpose; every decision (admit, evict, load) is
taken on the loop with no ``await`` between its check and its change, and that is easiest to
see, and keep, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

from ._lease import Lease, LeaseContext
from ._pool_handle import PoolModel
from .config import ServerConfig
from .errors import ConfigError, ModelClosedError, SGLangError
from .model import AsyncSGLangModel
from .server import EventCallback, ServerEvent, ServerState

__all__ = [
    "EvictBy",
    "ModelPool",
    "PoolError",
    "PoolModel",
    "PoolQueueFullError",
    "PoolTimeoutError",
    "SerialStarts",
    "UnknownModelError",
]

logger = logging.getLogger("sglang_backend.pool")

SerialStarts = Literal["gpus", "pool", "none"]
EvictBy = Literal["stop", "sleep"]
_POLL = 0.25  # waiters re-check this often: streams closed outside the pool's sight
_RESIDENT = (ServerState.STARTING, ServerState.READY, ServerState.STOPPING)


class PoolError(SGLangError):
    """Base class of the pool's own errors."""


class PoolQueueFullError(PoolError):
    """Too many requests are already waiting for a model to be loaded (``max_waiting``)."""


class PoolTimeoutError(PoolError, TimeoutError):
    """A request waited longer than ``wait_timeout`` for its model to be loaded."""


class UnknownModelError(PoolError, LookupError):
    """No member of the pool has this name or alias; ``known`` lists the names."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = list(known)
        super().__init__(f"unknown model {name!r}; known models: {', '.join(self.known) or '(none)'}")


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (Python 3.11+; else assume so)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return True if cancelling is None else bool(cancelling())


def _gpus_of(server: ServerConfig) -> frozenset[int]:
    base = server.base_gpu_id or 0
    width = max(1, server.tp_size or 1) * max(1, server.dp_size or 1)
    return frozenset(range(base, base + width))


@dataclasses.dataclass(eq=False)
class _Member:
    name: str
    model: AsyncSGLangModel
    aliases: tuple[str, ...]
    pinned: bool
    group: str | None
    gpus: frozenset[int]
    memory: float | None
    evict: EvictBy = "stop"
    last_used: float = 0.0
    load_task: asyncio.Task[None] | None = None
    evict_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.model.state is ServerState.READY and self.evict_task is None

    @property
    def resident(self) -> bool:
        """Holds (or is about to hold, or still holds) GPU memory."""
        if self.load_task is not None or self.evict_task is not None:
            return True
        state = self.model.state
        if state is ServerState.SLEEPING:
            server = self.model.server
            return server is not None and not server.asleep
        return state in _RESIDENT

    @property
    def busy(self) -> bool:
        server = self.model.server
        return server is not None and server.inflight > 0


@dataclasses.dataclass(eq=False)
class _Waiter:
    member: _Member
    since: float = dataclasses.field(default_factory=time.monotonic)


class ModelPool:
    """Several models on one machine, loaded on demand and swapped by policy.

    Args:
        max_loaded: at most this many members resident at once (None: no count limit).
        max_waiting: at most this many requests waiting for a load; past it
            :class:`PoolQueueFullError`.
        wait_timeout: seconds a request may wait for room (for busy members to finish)
            before :class:`PoolTimeoutError` (None: no bound). Its model's start itself is
            bounded by that model's ``startup_timeout``.
        serial_starts: ``"gpus"`` (one cold start at a time per GPU set), ``"pool"`` (one at
            a time in the whole pool) or ``"none"``.
        on_event: receives pool events and every member's server events (``detail["model"]``).

    The constructor does no I/O; ``async with pool`` (or :meth:`start`) loads the pinned
    members, :meth:`aclose` stops every member.
    """

    def __init__(
        self,
        max_loaded: int | None = None,
        *,
        max_waiting: int = 64,
        wait_timeout: float | None = None,
        serial_starts: SerialStarts = "gpus",
        on_event: EventCallback | None = None,
    ) -> None:
        if max_loaded is not None and max_loaded < 1:
            raise ConfigError(f"max_loaded must be at least 1 (or None), got {max_loaded}")
        if max_waiting < 0:
            raise ConfigError(f"max_waiting must be >= 0, got {max_waiting}")
        if serial_starts not in ("gpus", "pool", "none"):
            raise ConfigError(f"serial_starts must be 'gpus', 'pool' or 'none', got {serial_starts!r}")
        self.max_loaded = max_loaded
        self.max_waiting = max_waiting
        self.wait_timeout = wait_timeout
        self.serial_starts: SerialStarts = serial_starts
        self._on_event = on_event
        self._members: dict[str, _Member] = {}
        self._names: dict[str, str] = {}  # name or alias -> name
        self._handles: dict[str, PoolModel] = {}
        self._waiters: deque[_Waiter] = deque()
        self._changed: asyncio.Event | None = None
        self._start_locks: dict[object, asyncio.Lock] = {}
        self._closed = False

    # -- configuration ----------------------------------------------------------------------
    def add(
        self,
        name: str,
        model_path: str,
        *,
        server: ServerConfig | None = None,
        aliases: Iterable[str] = (),
        pinned: bool = False,
        group: str | None = None,
        gpus: Iterable[int] | None = None,
        memory: float | None = None,
        model_config_dict: Mapping[str, Any] | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        evict: EvictBy = "stop",
    ) -> PoolModel:
        """Add a member (no I/O); returns its handle.

        ``gpus`` (default: ``base_gpu_id`` .. ``base_gpu_id + tp_size * dp_size - 1`` of
        ``server``) and ``memory`` (the fraction of each of those GPUs it takes; default
        ``server.mem_fraction_static``, None: not counted) are its GPU budget. ``evict``:
        how it makes room for another member, ``"stop"`` or ``"sleep"`` (the warm sleep).
        """
        if self._closed:
            raise ModelClosedError("the pool is closed")
        if evict not in ("stop", "sleep"):
            raise ConfigError(f"evict must be 'stop' or 'sleep', got {evict!r}")
        server = server or ServerConfig()
        if evict == "sleep":  # SGLang frees (and restores) memory only with these switches
            server = server.for_warm_sleep()
        aliases = tuple(aliases)
        for key in (name, *aliases):
            if not key or not isinstance(key, str):
                raise ConfigError(f"model names must be non-empty strings, got {key!r}")
            if key in self._names:
                raise ConfigError(f"model name {key!r} is already used in this pool")
        if memory is None:
            memory = server.mem_fraction_static
        if memory is not None and not 0 < memory <= 1:
            raise ConfigError(f"memory must be a fraction in (0, 1], got {memory}")
        gpu_set = frozenset(gpus) if gpus is not None else _gpus_of(server)
        if not gpu_set:
            raise ConfigError("gpus must name at least one GPU")
        model = AsyncSGLangModel(
            model_path, model_config_dict, api_key=api_key, timeout=timeout, server=server,
            on_event=functools.partial(self._member_event, name),
        )
        member = _Member(name, model, aliases, pinned, group, gpu_set, memory, evict)
        self._members[name] = member
        for key in (name, *aliases):
            self._names[key] = name
        self._handles[name] = PoolModel(self, member)
        return self._handles[name]

    # -- lookup -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Every member's name, in the order added."""
        return list(self._members)

    def resolve(self, name: str) -> str:
        """The member name for ``name`` (a name or an alias); UnknownModelError if none."""
        try:
            return self._names[name]
        except KeyError:
            raise UnknownModelError(name, list(self._members)) from None

    def model(self, name: str) -> PoolModel:
        """The handle of member ``name`` (or alias): the model API, admitted by the pool."""
        return self._handles[self.resolve(name)]

    def loaded(self) -> list[str]:
        """Names of the members whose server is ready now."""
        return [m.name for m in self._members.values() if m.ready]

    def describe(self) -> list[dict[str, Any]]:
        """One dict per member: name, aliases, state, loaded, pinned, group, gpus, memory,
        evict, inflight."""
        return [
            {"name": m.name, "aliases": list(m.aliases), "state": m.model.state.value,
             "loaded": m.ready, "pinned": m.pinned, "group": m.group, "gpus": sorted(m.gpus),
             "memory": m.memory, "evict": m.evict,
             "inflight": m.model.server.inflight if m.model.server else 0}
            for m in self._members.values()
        ]

    @property
    def waiting(self) -> int:
        """Requests waiting now for room or a start."""
        return len(self._waiters)

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> ModelPool:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Load the pinned members (each as if requested)."""
        if self._closed:
            raise ModelClosedError("the pool is closed")
        for member in self._members.values():
            if member.pinned:
                await self._load_now(member)

    async def aclose(self) -> None:
        """Stop every member and release everything. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._notify()
        tasks = [t for m in self._members.values() for t in (m.load_task, m.evict_task) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(m.model.aclose() for m in self._members.values()),
                             return_exceptions=True)

    def __repr__(self) -> str:
        return (f"ModelPool(members={self.names!r}, loaded={self.loaded()!r}, "
                f"max_loaded={self.max_loaded})")

    # -- events -------------------------------------------------------------------------------
    def _emit(self, kind: str, member: _Member, **detail: Any) -> None:
        event = ServerEvent(kind, pid=member.model.pid, base_url=member.model.base_url,
                            detail={"model": member.name, **detail})
        logger.info("pool event %s %s", kind, dict(event.detail))
        self._deliver(event)

    def _deliver(self, event: ServerEvent) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event callback raised for %s", event.kind)

    def _member_event(self, name: str, event: ServerEvent) -> None:
        member = self._members.get(name)
        if member is not None and event.kind in ("idle_stopped", "crashed"):
            self._emit("unloaded", member, reason="idle" if event.kind == "idle_stopped" else "crashed")
        self._deliver(dataclasses.replace(event, detail={**event.detail, "model": name}))
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # -- admission ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _admitted(self, member: _Member) -> AsyncIterator[Lease]:
        """Admit one request to ``member``: load it first if needed, then hold a lease."""
        try:
            async with await self._admit(member) as lease:
                yield lease
        finally:
            member.last_used = time.monotonic()
            self._notify()

    async def _admit(self, member: _Member) -> LeaseContext:
        """Wait until ``member`` is ready; return its lease context, not yet entered.

        Returned with no ``await`` after the readiness check, so entering the context admits
        on the ready server at once (it cannot idle-stop in between).
        """
        if self._closed:
            raise ModelClosedError("the pool is closed")
        member.last_used = time.monotonic()
        if member.ready:
            return member.model.lease()
        return await self._wait_ready(member)

    async def _wait_ready(self, member: _Member) -> LeaseContext:
        if len(self._waiters) >= self.max_waiting:
            raise PoolQueueFullError(
                f"{len(self._waiters)} requests already wait for a model to be loaded "
                f"(max_waiting={self.max_waiting}); {member.name!r} was refused"
            )
        waiter = _Waiter(member)
        self._waiters.append(waiter)
        self._emit("queued", member, waiting=len(self._waiters))
        blocked = 0.0  # seconds spent with nothing to do but wait for a busy member
        try:
            while True:
                if self._closed:
                    raise ModelClosedError("the pool is closed")
                member.last_used = time.monotonic()
                if member.ready:
                    return member.model.lease()
                task = member.load_task or member.evict_task
                if task is None and self._my_turn(waiter):
                    task = self._make_room_or_load(member)
                if task is not None:  # progress: a load or an eviction (own bounds apply)
                    own_load = task is member.load_task
                    try:
                        await asyncio.shield(task)
                    except asyncio.CancelledError:
                        # The load was cancelled (unload, aclose), not this waiter: look again.
                        if not task.cancelled() or _cancelling():
                            raise
                    except Exception:
                        if own_load:
                            raise
                        # an eviction failed (logged by the task's owner): look again
                    continue
                if self.wait_timeout is not None and blocked >= self.wait_timeout:
                    raise PoolTimeoutError(
                        f"waited {self.wait_timeout:g} s for room to load {member.name!r} "
                        f"(loaded: {', '.join(self.loaded()) or 'none'}; members with requests "
                        "in flight or open streams are never evicted)"
                    )
                began = time.monotonic()
                await self._wait_changed()
                blocked += time.monotonic() - began
        finally:
            self._waiters.remove(waiter)
            self._notify()

    def _my_turn(self, waiter: _Waiter) -> bool:
        """Fair order: no earlier waiter for another member needs any of these GPUs."""
        for earlier in self._waiters:
            if earlier is waiter:
                return True
            other = earlier.member
            if (other is not waiter.member and other.gpus & waiter.member.gpus
                    and other.load_task is None and not other.ready):
                return False  # it still waits for room on a GPU this one needs
        return True

    async def _wait_changed(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), _POLL)

    # -- policy -------------------------------------------------------------------------------
    def _conflicts(self, member: _Member) -> tuple[str, list[_Member]] | None:
        """The first rule ``member`` loading now would break, with the members in the way."""
        others = [m for m in self._members.values() if m is not member and m.resident]
        if member.group is not None:
            same = [m for m in others if m.group == member.group]
            if same:
                return "group", same
        if member.memory is not None:
            for gpu in sorted(member.gpus):
                on_gpu = [m for m in others if gpu in m.gpus and m.memory is not None]
                if sum(m.memory or 0.0 for m in on_gpu) + member.memory > 1.0 + 1e-9:
                    return "gpu_memory", on_gpu
        if self.max_loaded is not None and len(others) >= self.max_loaded:
            return "max_loaded", others
        return None

    def _make_room_or_load(self, member: _Member) -> asyncio.Task[None] | None:
        """Start the load if there is room, else the eviction of one member in the way.

        None: nothing can be done now (every member in the way is busy, pinned or in
        transition); the caller waits for a change.
        """
        conflict = self._conflicts(member)
        if conflict is None:
            member.load_task = asyncio.ensure_future(self._load(member))
            return member.load_task
        reason, blocking = conflict
        candidates = [m for m in blocking
                      if not m.pinned and m.load_task is None and m.evict_task is None
                      and not m.busy]
        if not candidates:
            return None
        victim = min(candidates, key=lambda m: m.last_used)
        victim.evict_task = asyncio.ensure_future(self._evict(victim, reason, member))
        return victim.evict_task

    async def _load_now(self, member: _Member) -> None:
        async with self._admitted(member):
            pass

    def _start_lock_keys(self, member: _Member) -> Sequence[object]:
        if self.serial_starts == "none":
            return []
        if self.serial_starts == "pool":
            return ["pool"]
        return sorted(member.gpus)

    async def _load(self, member: _Member) -> None:
        queued = min((w.since for w in self._waiters if w.member is member), default=time.monotonic())
        try:
            async with contextlib.AsyncExitStack() as locks:
                for key in self._start_lock_keys(member):
                    await locks.enter_async_context(self._start_locks.setdefault(key, asyncio.Lock()))
                started = time.monotonic()
                woke = member.model.state is ServerState.SLEEPING
                self._emit("loading", member, waited=round(started - queued, 3),
                           gpus=sorted(member.gpus), woke=woke)
                try:
                    for _ in range(3):  # a start during the member's own idle stop waits it out
                        await member.model.start()
                        if member.model.state is ServerState.READY:
                            break
                except Exception as exc:
                    self._emit("load_failed", member, error=f"{type(exc).__name__}: {exc}",
                               duration=round(time.monotonic() - started, 3))
                    raise
            self._emit("loaded", member, duration=round(time.monotonic() - started, 3),
                       waited=round(started - queued, 3), woke=woke)
        finally:
            member.load_task = None
            self._notify()

    async def _evict(self, victim: _Member, reason: str, newcomer: _Member) -> None:
        started = time.monotonic()
        self._emit("evicting", victim, reason=reason, for_model=newcomer.name, how=victim.evict)
        how: EvictBy = "stop"
        try:
            if victim.evict == "sleep" and await victim.model.sleep():
                how = "sleep"
            else:
                await victim.model.stop()
        finally:
            victim.evict_task = None
            self._emit("evicted", victim, reason=reason, for_model=newcomer.name, how=how,
                       duration=round(time.monotonic() - started, 3))
            self._notify()

    async def unload(self, name: str) -> None:
        """Stop member ``name`` now (it loads again on its next request)."""
        member = self._members[self.resolve(name)]
        if member.load_task is not None:
            member.load_task.cancel()
            await asyncio.gather(member.load_task, return_exceptions=True)
        await member.model.stop()
        self._notify()
