"""The blocking facade's event loop: one daemon thread per model, and the one way onto it.

:class:`LoopThread` runs the loop (anyio's blocking portal) and is the only door to it:
``call`` (run and wait, Ctrl-C cancels), ``submit`` (run, do not wait) and ``call_soon`` (a
plain function, soon). A call from the loop thread itself raises instead of hanging.
:class:`FacadeLoop` is what a facade's finalizer holds: the async model and its loop thread.
A forked child never touches either (see ``forget_after_fork``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import ParamSpec, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .errors import ModelClosedError
from .model import AsyncSGLangModel
from .server import ServerState

__all__ = ["WAKE_INTERVAL", "FacadeLoop", "LoopThread"]

#: How often a blocked caller wakes to let Ctrl-C through.
WAKE_INTERVAL = 0.2
_CANCEL_WAIT = 10.0
P = ParamSpec("P")
T = TypeVar("T")


class LoopThread:
    """The loop thread. Started on first use, stopped by close() or the finalizer.

    The thread is a daemon running ``anyio.run`` with a :class:`BlockingPortal` in its main
    task (what ``start_blocking_portal`` does in recent anyio; older 4.x releases run it in an
    executor thread that interpreter shutdown joins *before* atexit finalizers could stop it,
    which hangs the exit). Calls are submitted with ``asyncio.run_coroutine_threadsafe`` on the
    portal's loop: ~30 µs a round trip here against ~160 µs for ``BlockingPortal.call``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._stopped = False
        self._forked_from: int | None = None

    def forget_after_fork(self, parent: int) -> None:
        """In a forked child: the loop thread did not come along; never wait for it."""
        self._lock = threading.Lock()  # may have been held by another thread at fork time
        self._forked_from = parent
        self._stopped = True
        self._portal = self._loop = self._thread = None
        self._thread_id = None

    def get(self) -> BlockingPortal:
        portal = self._portal
        if portal is not None:
            return portal
        with self._lock:
            if self._forked_from is not None:
                raise ModelClosedError(
                    f"this SGLangModel belongs to process {self._forked_from}, of which this "
                    "process is a fork; create a new model in the child"
                )
            if self._stopped:
                raise ModelClosedError("the model is closed")
            if self._portal is None:
                ready: Future[tuple[BlockingPortal, asyncio.AbstractEventLoop]] = Future()
                thread = threading.Thread(
                    target=_run_portal, args=(ready,), name="sglang-backend-loop", daemon=True
                )
                thread.start()
                self._portal, self._loop = ready.result()
                self._thread, self._thread_id = thread, thread.ident
            return self._portal

    @property
    def started(self) -> bool:
        return self._portal is not None

    def in_loop_thread(self) -> bool:
        return self._thread_id == threading.get_ident()

    def call(self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func`` on the loop and wait; Ctrl-C (or any interruption) cancels it there
        and waits for the cancellation to finish, so the model is consistent afterwards."""
        if self.in_loop_thread():
            # Waiting here would wait for this very thread: a hang, forever.
            raise RuntimeError(
                "a blocking SGLangModel method was called from the model's own event loop "
                "thread (an on_event callback?); hand the work to another thread, or use "
                "model.async_model there"
            )
        started = threading.Event()
        finished = threading.Event()

        async def runner() -> T:
            started.set()
            try:
                return await func(*args, **kwargs)
            finally:
                finished.set()

        self.get()
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(runner(), self._loop)
        try:
            while True:
                # A timed wait returns to Python code regularly, so Ctrl-C (and
                # _thread.interrupt_main) is raised promptly even without EINTR.
                try:
                    return future.result(timeout=WAKE_INTERVAL)
                except FutureTimeoutError:
                    if future.done():
                        raise  # the call itself raised a TimeoutError
        except BaseException:
            if not future.done():
                future.cancel()
                if started.is_set():
                    finished.wait(_CANCEL_WAIT)
            raise

    def submit(self, func: Callable[[], Awaitable[T]]) -> Future[T]:
        """Start ``func`` on the loop without waiting for it."""
        self.get()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(_await(func), self._loop)

    def call_soon(self, func: Callable[[], object]) -> None:
        """Run the plain function ``func`` on the loop soon; do not wait (no-op once stopped)."""
        loop = self._loop
        if loop is None:
            return
        if self.in_loop_thread():
            func()
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(func)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            portal, thread, self._portal = self._portal, self._thread, None
        if portal is not None and thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop may already be gone
                portal.call(portal.stop, True)
            if thread is not threading.current_thread():
                thread.join()


async def _await(func: Callable[[], Awaitable[T]]) -> T:
    return await func()


def _run_portal(ready: Future[tuple[BlockingPortal, asyncio.AbstractEventLoop]]) -> None:
    async def main() -> None:
        async with BlockingPortal() as portal:
            ready.set_result((portal, asyncio.get_running_loop()))
            await portal.sleep_until_stopped()

    try:
        anyio.run(main)
    except BaseException as exc:
        if not ready.done():
            ready.set_exception(exc)
        else:
            raise


class FacadeLoop:
    """What the finalizer needs (never the facade itself)."""

    def __init__(self, model: AsyncSGLangModel) -> None:
        self.model = model
        self.portal = LoopThread()
        self.closed = False
        _RUNTIMES.add(self)

    def forget_after_fork(self, parent: int) -> None:
        # The child must neither stop the parent's server nor wait on a loop it lacks.
        self.closed = True
        self.portal.forget_after_fork(parent)

    def check_open(self) -> None:
        """Raise ModelClosedError (naming the parent process in a forked child) once closed."""
        if self.closed:
            self.portal.get()  # raises the fork-specific error in a forked child
            raise ModelClosedError("the model is closed")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.portal.started:
                self.portal.call(self.model.aclose)
        finally:
            self.portal.stop()

    def finalize(self) -> None:
        if self.closed:
            return
        if self.portal.started and self.model.state is not ServerState.CLOSED:
            warnings.warn(
                f"SGLangModel({self.model.model_type!r}) was never closed; use `with "
                "SGLangModel(...)` or call close()",
                ResourceWarning,
                stacklevel=2,
            )
        if self.portal.in_loop_thread():  # collected on the loop thread: cannot block here
            self.closed = True
            self.portal.get().start_task_soon(self.model.aclose)
            return
        self.close()


_RUNTIMES: weakref.WeakSet[FacadeLoop] = weakref.WeakSet()
_PARENT_PID = os.getpid()


def _forget_runtimes_after_fork() -> None:
    global _PARENT_PID
    parent, _PARENT_PID = _PARENT_PID, os.getpid()
    for runtime in list(_RUNTIMES):
        runtime.forget_after_fork(parent)


def _remember_pid() -> None:
    global _PARENT_PID
    _PARENT_PID = os.getpid()


os.register_at_fork(before=_remember_pid, after_in_child=_forget_runtimes_after_fork)
