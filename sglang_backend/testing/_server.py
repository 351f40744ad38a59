"""Running the app under uvicorn: signals, warm-up, readiness, drain (imports the web stack)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import uvicorn
import uvicorn.config

from sglang_backend._log_lines import READY_LINE
from sglang_backend.testing._app import WARMUP_HEADER, ServerState, build_app, env_health_generation
from sglang_backend.testing._cli import StandinArgs
from sglang_backend.testing._events import LOG_DATEFMT

if TYPE_CHECKING:
    from sglang_backend.testing._launcher import Launcher

__all__ = ["configure_uvicorn_logging", "serve"]

logger = logging.getLogger("sglang.srt.entrypoints.http_server")
access_logger = logging.getLogger("uvicorn.access")

WARMUP_BODY = {
    "text": "The capital city of France is",
    "sampling_params": {"temperature": 0, "max_new_tokens": 8},
}


def _log_config(args: StandinArgs) -> dict[str, Any]:
    """uvicorn's logging config with SGLang's ``[time] LEVEL: msg`` format."""
    config: dict[str, Any] = json.loads(json.dumps(uvicorn.config.LOGGING_CONFIG))
    config["formatters"]["default"]["fmt"] = "[%(asctime)s] %(levelprefix)s %(message)s"
    config["formatters"]["default"]["datefmt"] = LOG_DATEFMT
    config["formatters"]["default"]["use_colors"] = False
    config["formatters"]["access"]["fmt"] = (
        '[%(asctime)s] %(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'
    )
    config["formatters"]["access"]["datefmt"] = LOG_DATEFMT
    config["formatters"]["access"]["use_colors"] = False
    level = (args.log_level_http or args.log_level).upper()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        config["loggers"][name]["level"] = level
    return config


def configure_uvicorn_logging(args: StandinArgs) -> None:
    """Install uvicorn's loggers now (the bind error is logged before uvicorn starts)."""
    import logging.config

    logging.config.dictConfig(_log_config(args))


class _Server(uvicorn.Server):
    """uvicorn server whose signals are handled by the stand-in and that ticks fast."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready_event = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Leave signal handling to the stand-in (installed on the loop)."""
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving; log ``Uvicorn running on …`` also for a pre-bound socket."""
        await super().startup(sockets=sockets)
        if sockets is not None and self.started:
            self._log_started_message(sockets)
        self.ready_event.set()

    async def main_loop(self) -> None:
        """Check ``should_exit`` every 20 ms (uvicorn's own loop checks every 100 ms)."""
        ticks = 0
        while not self.should_exit:
            await asyncio.sleep(0.02)
            ticks += 1
            if ticks % 5 == 0 and await self.on_tick(ticks // 5):
                return


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _http_impl() -> str:
    """httptools when installed, else h11."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


async def _http(
    host: str, port: int, method: str, path: str, headers: dict[str, Any], body: bytes = b""
) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 request (the warm-up must not need an HTTP client library)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status_line = data.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) > 1 else 0
    return status, data.split(b"\r\n\r\n", 1)[-1]


class _HttpServerRun:
    """One run of the stand-in's HTTP server: everything alive while it serves."""

    def __init__(self, launcher: Launcher, sock: socket.socket) -> None:
        self.launcher = launcher
        self.args = launcher.args
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.state = ServerState(args=self.args, events=launcher.events)
        self.state.health_generation = env_health_generation()
        self.state.crash = launcher.crash_hook
        self.state.die = launcher.die_with_tree
        self.app = build_app(self.state)
        config = uvicorn.Config(
            self.app,
            host=self.args.host,
            port=self.port,
            loop="none",
            http=_http_impl(),
            ws="none",
            lifespan="on",
            access_log=False,
            log_config=None,
            timeout_keep_alive=5,
        )
        self.server = _Server(config)
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---------------------------------------------------------------- signals

    def on_sigterm(self) -> None:
        """SGLang's graceful SIGTERM: health 503, drain, exit 0."""
        if self.args.standin_ignore_sigterm:
            logger.warning("SIGTERM received and ignored (--standin-ignore-sigterm).")
            return
        if self.draining:
            return
        self.draining = True
        logger.info("SIGTERM received. signum=15 frame=None. Draining requests and shutting down...")
        self.state.status = "Draining"
        self._spawn(self._drain())

    async def _drain(self) -> None:
        last_log = 0.0
        while self.state.inflight > 0:
            now = time.monotonic()
            if now - last_log >= 1.0:
                logger.info("Gracefully exiting... Remaining number of requests %d", self.state.inflight)
                last_log = now
            await asyncio.sleep(0.02)
        self.server.should_exit = True

    def on_sigint(self) -> None:
        """Ctrl-C: stop quickly and exit as interrupted."""
        self.launcher.interrupted = True
        self.state.status = "Draining"
        self.server.should_exit = True
        self.server.force_exit = True

    # ---------------------------------------------------------------- warm-up

    async def warmup(self) -> None:
        """SGLang's ``_wait_and_warmup``: poll ``/model_info``, then one ``/generate``."""
        args = self.args
        host = args.host
        if host in {"0.0.0.0", "", "::"}:
            host = "127.0.0.1"
        headers = self.launcher.warmup_headers()
        headers[WARMUP_HEADER] = "1"
        try:
            for _ in range(120):
                status, _body = await _http(host, self.port, "GET", "/model_info", headers)
                if status == 200:
                    break
                await asyncio.sleep(1.0)
            self._access("GET /model_info", status)
            # Embedding models warm up through /encode with one token (SGLang's _execute_server_warmup).
            path = "/encode" if args.is_embedding else "/generate"
            warm = dict(WARMUP_BODY)
            if args.is_embedding:
                warm["sampling_params"] = {"temperature": 0, "max_new_tokens": 1}
            body = json.dumps(warm).encode()
            status, reply = await _http(host, self.port, "POST", path, headers, body)
            self._access(f"POST {path}", status)
            if status != 200:
                raise RuntimeError(f"warmup {path} returned {status}: {reply[:200]!r}")
        except (OSError, RuntimeError) as exc:
            logger.error("Initialization failed. warmup error: %s", exc)
            self.launcher.die_with_tree()
            return
        if args.standin_warmup_seconds > 0:
            await asyncio.sleep(args.standin_warmup_seconds)
        self.mark_ready()

    def _access(self, request_line: str, status: int) -> None:
        """Print the warm-up's access-log line to stdout (as SGLang's uvicorn does)."""
        if access_logger.isEnabledFor(logging.INFO):
            stamp = time.strftime(LOG_DATEFMT)
            sys.stdout.write(f'[{stamp}] INFO:     127.0.0.1:0 - "{request_line} HTTP/1.1" {status} OK\n')
            sys.stdout.flush()

    def mark_ready(self) -> None:
        """Phase E: healthy, then the ready event, then the ready line."""
        if self.state.status != "Starting":
            return
        self.state.status = "Up"
        self.launcher.events.write("ready")
        logger.info(READY_LINE)

    # ---------------------------------------------------------------- main

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self.on_sigint)
        loop.add_signal_handler(signal.SIGQUIT, self.launcher.die_with_tree)
        serve_task = asyncio.ensure_future(self.server.serve(sockets=[self.sock]))
        waiter = asyncio.ensure_future(self.server.ready_event.wait())
        await asyncio.wait({waiter, serve_task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self.server.started:
            self.launcher.events.write("listening")
            if self.args.skip_server_warmup:
                self.mark_ready()
            else:
                self._spawn(self.warmup())
        try:
            await serve_task
        except SystemExit as exc:
            return int(exc.code) if isinstance(exc.code, int) else 1
        finally:
            for task in list(self.tasks):
                task.cancel()
        logger.info("Stand-in server exited.")
        return 0


def serve(launcher: Launcher, sock: socket.socket) -> int:
    """Run the HTTP server on *sock* until it stops; return the exit code."""
    runtime = _HttpServerRun(launcher, sock)
    loop = _loop_factory()()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(runtime.run())
    finally:
        with contextlib.suppress(RuntimeError):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)
