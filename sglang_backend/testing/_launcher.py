"""The stand-in's launcher process: SGLang's startup phases, children, signals, exit codes.

Phases (as SGLang 0.5.23, see SGLANG_PROTOCOL.md §2):

A. parse the command line (argparse exit 2), log ``server_args={…}``;
B. spawn ``sglang::scheduler_TP<i>`` and ``sglang::detokenizer`` children, simulate the
   model load with the port closed (``--standin-load-seconds``), scheduler-style log lines;
C. bind and start uvicorn (``/health`` 503, ``/v1/models`` already 200);
D. self warm-up: ``GET /model_info`` then ``POST /generate`` over real HTTP with the key,
   plus ``--standin-warmup-seconds``;
E. ``/health`` 200 and ``The server is fired up and ready to roll!`` on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from sglang_backend.testing._cli import StandinArgs, build_parser, parse_args
from sglang_backend.testing._events import LOG_DATEFMT, EventLog, setup_logging

__all__ = ["main"]

_CHILD_SCRIPT = str(Path(__file__).resolve().with_name("_child.py"))
_CHILD_READY_TIMEOUT = 20.0

logger = logging.getLogger("sglang.srt.entrypoints.http_server")
sched_logger = logging.getLogger("sglang.srt.managers.scheduler")


def _setup_scheduler_logger(level: str) -> None:
    """Scheduler lines look like ``[YYYY-MM-DD HH:MM:SS TP0] msg``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s TP0] %(message)s", datefmt=LOG_DATEFMT))
    sched_logger.handlers[:] = [handler]
    sched_logger.propagate = False
    sched_logger.setLevel(level.upper())


class Children:
    """The dummy scheduler/detokenizer processes."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, tp_size: int) -> None:
        """Start ``tp_size`` schedulers and one detokenizer (in parallel, not waited for)."""
        titles = [f"sglang::scheduler_TP{i}" for i in range(max(tp_size, 1))]
        titles.append("sglang::detokenizer")
        for title in titles:
            proc = subprocess.Popen(
                # Run the file, not the module: importing the ``sglang_backend`` package
                # (the client library) would cost every child a few hundred ms of CPU.
                [sys.executable, _CHILD_SCRIPT, title, str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
            self.procs.append(proc)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every child reported ``ready`` (or one died / the timeout passed)."""
        deadline = time.monotonic() + timeout
        pending: dict[int, subprocess.Popen[bytes]] = {}
        for proc in self.procs:
            if proc.stdout is not None:
                pending[proc.stdout.fileno()] = proc
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            readable, _, _ = select.select(list(pending), [], [], left)
            for fd in readable:
                proc = pending.pop(fd)
                stdout: IO[bytes] | None = proc.stdout
                line = stdout.readline() if stdout is not None else b""
                if line.strip() != b"ready":
                    return False
        return True

    def crash(self) -> None:
        """Order the first scheduler to 'hit an exception' (it SIGQUITs the launcher)."""
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.write(b"crash\n")
                    proc.stdin.flush()
                    return

    def kill(self) -> None:
        """SIGKILL every child and reap it."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def terminate(self, grace: float = 0.5) -> None:
        """Ask children to exit (close their pipe, SIGTERM), then SIGKILL what is left."""
        for proc in self.procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        self.kill()


class Launcher:
    """Runs one stand-in server from command line to exit code."""

    def __init__(self, args: StandinArgs) -> None:
        self.args = args
        self.events = EventLog(args.standin_events_file)
        self.children = Children()
        self.interrupted = False
        self.exit_code = 0

    # ------------------------------------------------------------------ signals

    def die_with_tree(self) -> None:
        """SIGQUIT path: log like SGLang, SIGKILL the children and then ourselves."""
        logger.error("Received sigquit from a child process. It usually means one child failed.")
        for handler in logging.getLogger().handlers:
            handler.flush()
        for proc in self.children.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        os.kill(os.getpid(), signal.SIGKILL)

    def _sigquit_during_load(self, signum: int, frame: object) -> None:
        self.die_with_tree()

    def _sigterm_ignored(self, signum: int, frame: object) -> None:
        logger.warning("SIGTERM received and ignored (--standin-ignore-sigterm).")

    # ------------------------------------------------------------------ phases

    def run(self) -> int:
        """Run all phases; return the exit code."""
        args = self.args
        signal.signal(signal.SIGQUIT, self._sigquit_during_load)
        if args.standin_ignore_sigterm:
            signal.signal(signal.SIGTERM, self._sigterm_ignored)
        try:
            if args.standin_fail_with is not None and self._fail_with_before_load():
                return 1
            logger.info("server_args=%s", args.server_args_dict())
            if args.ignored_args:
                logger.debug("Stand-in ignores unknown arguments: %s", args.ignored_args)
            self.children.spawn(args.tp_size)
            code = self._load()
            if code is not None:
                return code
            return self._serve()
        except KeyboardInterrupt:
            self.children.kill()
            self.events.write("exit")
            raise
        finally:
            self.children.kill()
            self.events.close()

    def _load(self) -> int | None:
        """Phase B: simulated weight load with the port closed; an exit code on failure."""
        args = self.args
        load = max(args.standin_load_seconds, 0.0)
        t0 = time.monotonic()
        sched_logger.info("Init torch distributed begin.")
        sched_logger.info("Load weight begin. avail mem=78.50 GB")
        # Importing the web stack while the children start keeps the startup fast.
        from sglang_backend.testing import _server  # noqa: F401

        time.sleep(load * 0.6)
        if args.standin_fail_with is not None:
            self._fail_with_in_scheduler()
        if args.standin_fail_at_load is not None:
            time.sleep(max(load - (time.monotonic() - t0), 0.0))
            sched_logger.error(
                "Scheduler hit an exception: Traceback (most recent call last):\n"
                '  File "sglang/srt/managers/scheduler.py", line 2960, in run_scheduler_process\n'
                "    scheduler = Scheduler(server_args, port_args, gpu_id, tp_rank, dp_rank)\n"
                '  File "sglang/srt/model_executor/model_runner.py", line 812, in load_model\n'
                "    self.model = get_model(model_config=self.model_config)\n"
                "RuntimeError: %s",
                args.standin_fail_at_load,
            )
            self.events.write("fail")
            self.children.kill()
            return 1
        sched_logger.info(
            "Load weight end. type=Qwen2ForCausalLM, dtype=torch.bfloat16, avail mem=77.50 GB, "
            "mem usage=1.00 GB."
        )
        sched_logger.info(
            "KV Cache is allocated. #tokens: %d, K size: 2.00 GB, V size: 2.00 GB",
            max(args.context_length * 4, 262_144),
        )
        sched_logger.info("Capture cuda graph begin. This can take up to several minutes.")
        time.sleep(max(load - (time.monotonic() - t0), 0.0))
        sched_logger.info("Capture cuda graph end. Time elapsed: %.2f s. mem usage=0.10 GB.", load * 0.4)
        sched_logger.info(
            "max_total_num_tokens=%d, chunked_prefill_size=8192, max_prefill_tokens=16384, "
            "max_running_requests=4096, context_len=%d, available_gpu_mem=70.00 GB",
            max(args.context_length * 4, 262_144),
            args.context_length,
        )
        if not self.children.wait_ready(_CHILD_READY_TIMEOUT):
            logger.error("Initialization failed. A scheduler/detokenizer process did not start.")
            self.events.write("fail")
            self.children.kill()
            return 1
        return None

    def _fail_with_before_load(self) -> bool:
        """``--standin-fail-with`` texts the launcher itself prints (exit 1); False if none."""
        entry = _fail_pattern(self.args.standin_fail_with)
        if entry.where != "main":
            return False
        if entry.kind != "not-installed":  # runpy prints one line, the others a traceback
            print(
                "Traceback (most recent call last):\n"
                '  File "sglang/launch_server.py", line 24, in <module>\n'
                "    server_args = prepare_server_args(sys.argv[1:])",
                file=sys.stderr,
            )
        print(entry.sample, file=sys.stderr, flush=True)
        self.events.write("fail")
        return True

    def _fail_with_in_scheduler(self) -> None:
        """A scheduler's exception: it SIGQUITs the launcher, which kills the tree and itself."""
        entry = _fail_pattern(self.args.standin_fail_with)
        sched_logger.error(
            "Scheduler hit an exception: Traceback (most recent call last):\n"
            '  File "sglang/srt/managers/scheduler.py", line 2960, in run_scheduler_process\n'
            "    scheduler = Scheduler(server_args, port_args, gpu_id, tp_rank, dp_rank)\n"
            "%s",
            entry.sample,
        )
        self.events.write("fail")
        self.die_with_tree()

    def _bind(self) -> socket.socket | None:
        """Create the listening socket (IPPROTO_TCP so asyncio sets TCP_NODELAY)."""
        args = self.args
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((args.host, args.port))
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            reason = exc.strerror.lower() if exc.strerror else str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason = "address already in use"
            logging.getLogger("uvicorn.error").error(
                "[Errno %s] error while attempting to bind on address %r: %s",
                exc.errno,
                (args.host, args.port),
                reason,
            )
            return None
        sock.setblocking(False)
        return sock

    def _serve(self) -> int:
        """Phases C-E and shutdown."""
        from sglang_backend.testing._server import configure_uvicorn_logging, serve

        configure_uvicorn_logging(self.args)
        sock = self._bind()
        if sock is None:
            self.events.write("fail")
            self.children.kill()
            return 1
        code = serve(self, sock)
        self.children.terminate()
        if self.interrupted:
            self.events.write("exit")
            self.events.close()
            for handler in logging.getLogger().handlers:
                handler.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
            return 130
        self.events.write("exit")
        return code

    def crash_hook(self) -> None:
        """Called by the app on the crashing request: a child will SIGQUIT us."""
        self.children.crash()

    def warmup_headers(self) -> dict[str, Any]:
        """Headers the warm-up requests send (the API key, like SGLang's warm-up)."""
        headers: dict[str, Any] = {}
        if self.args.api_key:
            headers["Authorization"] = f"Bearer {self.args.api_key}"
        return headers


def _fail_pattern(kind: str | None) -> Any:
    """The ``sglang_backend._diagnose`` table entry for ``--standin-fail-with KIND``."""
    from sglang_backend._diagnose import pattern  # only when the switch is used

    return pattern(str(kind))


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the stand-in with *argv* (default ``sys.argv[1:]``)."""
    args = parse_args(argv)
    if args.standin_fail_with is not None:
        try:
            entry = _fail_pattern(args.standin_fail_with)
        except KeyError:
            build_parser().error(f"unknown --standin-fail-with kind {args.standin_fail_with!r}")
        if entry.where == "argparse":  # SGLang's argparse rejects the flag: usage, exit 2
            build_parser().error(entry.sample.split(": error: ", 1)[-1])
    setup_logging(args.log_level)
    _setup_scheduler_logger(args.log_level)
    return Launcher(args).run()
