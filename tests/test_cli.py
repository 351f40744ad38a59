"""The `sglang-backend` command, run as a real subprocess against the stand-in server."""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

import sglang_backend
from sglang_backend import config as config_module
from sglang_backend._http import httpx
from sglang_backend.cli import build_parser, server_config_from_args
from sglang_backend.testing import standin_command

CLI = [sys.executable, "-m", "sglang_backend.cli"]
LAUNCH = shlex.join(standin_command())
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
FAST = "--server-arg=--standin-token-delay=0.001"


def run_cli(*args: str, stdin: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SGLANG_API_KEY", None)
    return subprocess.run(
        [*CLI, *args], check=False, input=stdin, capture_output=True, text=True, timeout=timeout, env=env,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def assert_one_paragraph_without_traceback(stderr: str) -> list[str]:
    """The error block: starts with 'sglang-backend: error:', no blank line, and every
    traceback-looking line belongs to the server's quoted log tail ('  | ...')."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sglang-backend: error:"))
    block = lines[start:]
    assert all(line.strip() for line in block), stderr
    for line in lines:
        if "Traceback" in line or line.lstrip().startswith('File "'):
            assert line.startswith("  | "), f"traceback outside the log tail: {line!r}\n{stderr}"
    assert block[-1].startswith("  Try:") or "--debug" in block[-1]
    return block


# ------------------------------------------------------------------------------ usage


def test_version_and_usage_errors_exit_2() -> None:
    version = run_cli("--version")
    assert version.returncode == 0
    assert "sglang-backend" in version.stdout
    nothing = run_cli()
    assert nothing.returncode == 2
    assert "usage:" in nothing.stderr
    no_prompt = run_cli("chat", "--model-path", MODEL)
    assert no_prompt.returncode == 2
    assert "give a prompt" in no_prompt.stderr
    bogus = run_cli("chat", "--bogus-flag", "hi")
    assert bogus.returncode == 2
    assert "--bogus-flag" in bogus.stderr
    bad_config = run_cli("serve", "--model-path", MODEL, "--nnodes", "2")
    assert bad_config.returncode == 2
    assert "dist_init_addr" in bad_config.stderr
    assert "Traceback" not in bad_config.stderr


def test_help_and_usage_errors_do_not_import_the_sdk() -> None:
    # A fresh interpreter: which modules `--help` (and a usage error) loaded.
    probe = textwrap.dedent("""
        import contextlib, io, json, sys
        from sglang_backend.cli import main
        codes = []
        for argv in (["--help"], ["serve", "--help"], ["chat", "--help"], ["demo", "--help"],
                     ["status", "--help"], ["chat", "--bogus-flag", "hi"]):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                try:
                    codes.append(main(argv))
                except SystemExit as exit:
                    codes.append(exit.code)
        heavy = ("openai", "httpx", "sglang_backend.model", "sglang_backend.server", "sglang_backend._http")
        print(json.dumps({"codes": codes, "loaded": [m for m in heavy if m in sys.modules]}))
    """)
    result = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                            text=True, timeout=60)
    seen = json.loads(result.stdout)
    assert seen["codes"] == [0, 0, 0, 0, 0, 2]
    assert seen["loaded"] == []


def test_python_dash_m_sglang_backend_is_the_command() -> None:
    result = subprocess.run([sys.executable, "-m", "sglang_backend", "--version"], check=False,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sglang-backend {sglang_backend.__version__}"


def test_serve_takes_every_typed_option_of_server_config() -> None:
    values = {"dist_init_addr": "10.0.0.1:5000", "mem_fraction_static": 0.5,
              "served_model_name": "mine", "chat_template": "chatml", "tool_call_parser": "qwen",
              "reasoning_parser": "qwen3"}
    parser = build_parser()
    for field, flags in config_module._TYPED_FLAGS.items():
        value = values.get(field, 2)  # the rest are counts
        for flag in flags:
            args, extra = parser.parse_known_args(["serve", "--model-path", MODEL, flag,
                                                   str(value)])
            assert extra == [], flag  # a typed option, not passed through to SGLang
            assert getattr(args, field) == value, flag
    args, extra = parser.parse_known_args(["serve", "--model-path", MODEL, "--max-lora-rank",
                                           "16", "--max-loras-per-batch", "4"])
    config = server_config_from_args(args, extra)
    assert (config.max_lora_rank, config.max_loras_per_batch) == (16, 4)


def test_serve_maps_typed_flags_and_passes_the_rest_through() -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(
        ["serve", "--model-path", MODEL, "--tp-size", "2", "--tool-call-parser", "qwen",
         "--dtype", "bfloat16", "--trust-remote-code", "--context-length", "8192",
         "--idle-timeout", "none", "--port", "31000"]
    )
    config = server_config_from_args(args, extra)
    assert config.tp_size == 2
    assert config.tool_call_parser == "qwen"
    assert config.context_length == 8192
    assert config.inactivity_timeout is None
    assert config.port == 31000
    assert config.extra_args == ("--dtype", "bfloat16", "--trust-remote-code")
    assert config.launch_command is None  # real SGLang unless --launch-command


# ------------------------------------------------------------------------------- demo


def test_demo_shows_stream_idle_stop_relaunch_and_cleanup() -> None:
    result = run_cli("demo", "--idle-timeout", "1", "--load-seconds", "0.3",
                     "--token-delay", "0.002")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "assistant: You said: What does an SGLang server do" in out
    assert "_City(name=" in out
    assert "state=stopped" in out
    assert "launches=2, state=ready" in out
    assert "Closed: state=closed" in out
    err = result.stderr
    for phase in ("parsing_args", "loading_weights", "allocating_kv_cache", "warming_up", "ready"):
        assert phase in err
    assert "Server idle: stopped" in err
    assert "Relaunching" in err


# ------------------------------------------------------------------------------- chat


def test_chat_one_shot_plain_and_streamed() -> None:
    plain = run_cli("chat", "--model-path", MODEL, "--launch-command", LAUNCH, FAST,
                    "--system", "Be brief.", "Hello from the CLI")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip().startswith("You said: Hello from the CLI")
    assert "loading_weights" in plain.stderr  # progress on stderr, reply alone on stdout
    assert "Server ready" in plain.stderr
    streamed = run_cli("chat", "--model-path", MODEL, "--launch-command", LAUNCH, FAST,
                       "--stream", "--max-tokens", "4", "Stream me")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip() == "You said: Stream"  # 4 tokens


def test_chat_interactive_reads_stdin_until_eof() -> None:
    result = run_cli("chat", "-i", "--model-path", MODEL, "--launch-command", LAUNCH, FAST,
                     stdin="first question\n\nsecond question\n")
    assert result.returncode == 0, result.stderr
    replies = result.stdout.strip().splitlines()
    assert len(replies) == 2
    assert replies[0].startswith("You said: first question")
    assert replies[1].startswith("You said: second question")


def test_failing_server_start_is_one_readable_paragraph() -> None:
    message = "CUDA out of memory. Tried to allocate 20.00 GiB"
    result = run_cli("chat", "--model-path", MODEL, "--launch-command", LAUNCH,
                     f"--server-arg=--standin-fail-at-load={message}", "hi")
    assert result.returncode == 1
    assert result.stdout == ""
    block = assert_one_paragraph_without_traceback(result.stderr)
    assert "the server exited during start with exit code 1" in block[0]
    assert "  | [" in "\n".join(block)
    assert any(line.startswith("  | ") and message in line for line in block)
    assert "--config " in "\n".join(block)  # the command is shown; the key is in the file
    assert "--api-key" not in "\n".join(block)
    assert "Try:" in "\n".join(block)
    debug = run_cli("--debug", "chat", "--model-path", MODEL, "--launch-command", LAUNCH,
                    f"--server-arg=--standin-fail-at-load={message}", "hi")
    assert debug.returncode == 1
    assert any(line.startswith("Traceback (most recent call last)")
               for line in debug.stderr.splitlines())


def test_missing_launch_program_says_what_to_install() -> None:
    result = run_cli("chat", "--model-path", MODEL, "--launch-command",
                     "/nonexistent/bin/sglang-server", "hi")
    assert result.returncode == 1
    block = assert_one_paragraph_without_traceback(result.stderr)
    text = "\n".join(block)
    assert "/nonexistent/bin/sglang-server" in text
    assert "sglang-backend[server]" in text


# ------------------------------------------------------------------------ serve/status


@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str
    api_key: str
    pid: int
    stdout: list[str]


def _reader(stream: object, into: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)
    into.put(None)


def start_serve(*args: str, timeout: float = 60) -> Served:
    proc = subprocess.Popen(
        [*CLI, "serve", "--model-path", MODEL, "--launch-command", LAUNCH, *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    fields: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while "pid" not in fields:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"serve printed no URL in time: {seen}") from None
        if line is None:
            raise AssertionError(f"serve exited early ({proc.wait()}): {seen} {proc.stderr.read()}")  # type: ignore[union-attr]
        seen.append(line)
        key, _, value = line.strip().partition(":")
        if value and key in ("URL", "API key", "pid"):
            fields[key] = value.strip()
    return Served(proc, fields["URL"], fields["API key"], int(fields["pid"]), seen)


@pytest.fixture
def served() -> Iterator[Served]:
    server = start_serve("--tp-size", "2", "--idle-timeout", "none", "--standin-token-delay",
                         "0.001")
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=30)


def test_serve_prints_url_and_key_and_stops_on_sigterm(served: Served) -> None:
    assert served.url.startswith("http://127.0.0.1:")
    assert len(served.api_key) >= 32
    info = httpx.get(f"{served.url}/server_info",
                     headers={"Authorization": f"Bearer {served.api_key}"}, timeout=10).json()
    assert info["tp_size"] == 2  # typed flag -> ServerConfig.tp_size -> --tp-size 2
    tree = [psutil.Process(served.pid), *psutil.Process(served.pid).children(recursive=True)]
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0
    assert "Received SIGTERM" in served.proc.stderr.read()  # type: ignore[union-attr]
    _gone, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive


def test_status_and_chat_against_a_running_server(served: Served) -> None:
    status = run_cli("status", "--url", served.url, "--api-key", served.api_key)
    assert status.returncode == 0, status.stderr
    assert f"{served.url}: healthy" in status.stdout
    assert "version:  0.5.23" in status.stdout
    assert f"model:    {MODEL}" in status.stdout
    assert served.api_key not in status.stdout
    as_json = run_cli("status", "--json", "--url", served.url + "/v1", "--api-key", served.api_key)
    report = json.loads(as_json.stdout)
    assert report["healthy"] is True
    assert report["models"][0]["id"] == MODEL
    assert report["model_info"]["model_path"] == MODEL
    wrong_key = run_cli("status", "--url", served.url, "--api-key", "wrong")
    assert wrong_key.returncode == 1
    assert_one_paragraph_without_traceback(wrong_key.stderr)
    assert "API key" in wrong_key.stderr
    chat = run_cli("chat", "--url", served.url, "--api-key", served.api_key, "--stream",
                   "Through the URL")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.startswith("You said: Through the URL")


def test_serve_stops_itself_when_idle() -> None:
    server = start_serve("--idle-timeout", "1")
    try:
        assert server.proc.wait(timeout=30) == 0
        assert "Stopped after 1 s without requests" in server.proc.stderr.read()  # type: ignore[union-attr]
        assert not psutil.pid_exists(server.pid) or (
            psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE
        )
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_serve_is_kept_alive_by_its_clients_then_stops_when_idle() -> None:
    # Requests straight to the URL serve printed, none through serve's own model: the
    # library's watchdog counts them (ServerConfig.keep_alive_on_traffic).
    server = start_serve("--idle-timeout", "2", "--standin-token-delay", "0.001")
    try:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        deadline = time.monotonic() + 5
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
            while time.monotonic() < deadline:
                response = client.post("/v1/chat/completions", headers=headers, json=body)
                assert response.status_code == 200, response.text
                assert server.proc.poll() is None
                time.sleep(0.25)
            metrics = client.get("/metrics")
        assert metrics.status_code == 200  # serve launched it with --enable-metrics
        assert server.proc.wait(timeout=30) == 0
        assert "Stopped after 2 s without requests" in server.proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_status_of_an_unreachable_server_is_a_runtime_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli("status", "--url", f"http://127.0.0.1:{port}", "--timeout", "2")
    assert result.returncode == 1
    block = assert_one_paragraph_without_traceback(result.stderr)
    assert "could not reach the server" in block[0]
