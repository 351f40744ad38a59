"""Real SGLang code as the judge: its argument parser and its OpenAI protocol models.

These tests need the real ``sglang`` package (0.5.23, installed ``--no-deps`` on CPU, see
``nox -s sglang-real``). Without it the whole directory is skipped with the reason below.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "sglang",
    reason="real SGLang is not installed: run `nox -s sglang-real` "
    "(installs sglang==0.5.23 --no-deps + CPU torch)",
)

from pydantic import BaseModel
from sglang.srt.arg_groups.arg_utils import record_fields
from sglang.srt.entrypoints.openai import protocol
from sglang.srt.server_args import ServerArgs

from tests.standin.conftest import Standin, StandinFactory

SGLANG_DIR = Path(protocol.__file__).resolve().parents[3]


# --------------------------------------------------------------------------- command lines


def sglang_parser() -> argparse.ArgumentParser:
    """SGLang's own argv parser, built exactly as ``prepare_server_args`` builds it."""
    parser = argparse.ArgumentParser(prog="sglang serve")
    ServerArgs.add_cli_args(parser)
    return parser


def parse_server_args(argv: list[str]) -> ServerArgs:
    """Parse *argv* into SGLang's ``ServerArgs`` without touching hardware, hub or logging.

    This is ``prepare_server_args`` minus its side effects: it builds the same parser
    (``ServerArgs.add_cli_args``), parses, and builds the record with
    ``ServerArgs.from_cli_args``. In 0.5.23 ``ServerArgs.__post_init__`` resolves nothing
    (``resolve_once()``, called later by the launcher, is what needs GPUs and the model
    config). Skipped on purpose: the ``--config`` YAML merge (unused by the library) and
    ``logging.basicConfig(force=True)``, which would tear out pytest's log capture.

    A bad flag or value raises AssertionError with argparse's message (argparse's exit 2).
    """
    parser = sglang_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            namespace = parser.parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(
            f"SGLang's parser rejects {argv!r}: "
            f"{stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else exc}"
        ) from None
    return ServerArgs.from_cli_args(namespace)


def server_args_fields(args: ServerArgs) -> dict[str, Any]:
    """Every field of a ``ServerArgs`` record (a msgspec Struct in 0.5.23) as a dict."""
    return {field.name: getattr(args, field.name) for field in record_fields(ServerArgs)}


# --------------------------------------------------------------------------- protocol


def unknown_keys(model: BaseModel, raw: Any, path: str = "$") -> list[str]:
    """Keys of *raw* (the JSON that validated into *model*) that *model* does not declare.

    SGLang's models ignore unknown keys, so validation alone would not notice an invented
    field; this walks the validated model and the raw JSON side by side.
    """
    found: list[str] = []
    if isinstance(model, BaseModel) and isinstance(raw, Mapping):
        fields = type(model).model_fields
        names = {name: name for name in fields}
        names.update({f.alias: name for name, f in fields.items() if f.alias})
        for key, value in raw.items():
            if key not in names:
                found.append(f"{path}.{key}")
                continue
            found += unknown_keys(getattr(model, names[key]), value, f"{path}.{key}")
    elif isinstance(model, list) and isinstance(raw, list):
        for index, (item, raw_item) in enumerate(zip(model, raw, strict=False)):
            found += unknown_keys(item, raw_item, f"{path}[{index}]")
    return found


def judge(model_type: type[BaseModel], raw: Any) -> Any:
    """Validate *raw* with SGLang's *model_type*; fail on keys it does not declare."""
    parsed = model_type.model_validate(raw)
    extra = unknown_keys(parsed, raw)
    assert not extra, f"{model_type.__name__} does not declare {extra} in {raw!r}"
    return parsed


def sglang_source_says(relative: str, text: str) -> None:
    """Assert that the installed SGLang source file contains *text* (an error message).

    Used for checks SGLang makes in code this CPU install cannot import (serving_chat needs
    jsonschema, transformers, ...): the expected wording is read from the real source.
    """
    source = (SGLANG_DIR / relative).read_text()
    assert text in source, f"{text!r} not found in sglang/{relative}"


# --------------------------------------------------------------------------- capture server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CaptureServer:
    """A tiny OpenAI-compatible server that records every JSON body it receives.

    It answers ``/health`` with 200 and chat completions with a canned, SGLang-shaped reply
    (``reply`` content or ``tool_call``), streamed when asked. The library talks to it in
    connect (``url=``) mode, so the bodies are the ones its real code path produces.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict[str, Any]] = []
        self.tokenize_bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.reply = "Hello!"
        self.tool_call: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def body(self) -> dict[str, Any]:
        assert len(self.bodies) == 1, f"expected one request, got {len(self.bodies)}"
        return self.bodies[0]

    async def app(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/health":
            await self._send(send, 200, b"", "text/plain")
            return
        if path == "/tokenize" and scope["method"] == "POST":
            self.tokenize_bodies.append(json.loads(raw))
            await self._send(send, 200, b'{"tokens":[1,2],"count":2,"max_model_len":4096}')
            return
        if path != "/v1/chat/completions" or scope["method"] != "POST":
            await self._send(send, 404, b'{"detail":"Not Found"}')
            return
        body = json.loads(raw)
        self.bodies.append(body)
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        if body.get("stream"):
            await self._send(send, 200, self._stream(body), "text/event-stream")
        else:
            await self._send(send, 200, json.dumps(self._completion(body)).encode())

    def _message(self) -> dict[str, Any]:
        if self.tool_call is not None:
            call = {"id": "call_0", "index": 0, "type": "function", "function": self.tool_call}
            return {"role": "assistant", "content": "", "reasoning_content": None, "tool_calls": [call]}
        return {"role": "assistant", "content": self.reply, "reasoning_content": None}

    def _completion(self, body: Mapping[str, Any]) -> dict[str, Any]:
        finish = "tool_calls" if self.tool_call is not None else "stop"
        return {
            "id": "0" * 32, "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": self._message(), "logprobs": None,
                         "finish_reason": finish, "matched_stop": None}],
            "usage": {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2,
                      "prompt_tokens_details": None, "reasoning_tokens": 0,
                      "completion_tokens_details": None},
        }  # fmt: skip

    def _stream(self, body: Mapping[str, Any]) -> bytes:
        head = {"id": "0" * 32, "object": "chat.completion.chunk", "created": 1, "model": body["model"]}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish,
                      "matched_stop": None}  # fmt: skip
            return {**head, "choices": [choice]}

        events = [
            chunk({"reasoning_content": None, "role": "assistant", "content": ""}),
            chunk({"reasoning_content": None, "content": self.reply}),
            chunk({"reasoning_content": None}, "stop"),
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = self._completion(body)["usage"]
            events.append({**head, "choices": [], "usage": usage})
        out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
        return out + b"data: [DONE]\n\n"

    @staticmethod
    async def _send(
        send: Callable[..., Any], status: int, body: bytes, kind: str = "application/json"
    ) -> None:
        headers = [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def capture() -> AsyncIterator[CaptureServer]:
    """A capture server running in the test's event loop."""
    import uvicorn

    server = CaptureServer()
    config = uvicorn.Config(server.app, host="127.0.0.1", port=server.port, log_level="warning",
                            interface="asgi3", lifespan="on")  # fmt: skip
    runner = uvicorn.Server(config)
    task = asyncio.ensure_future(runner.serve())
    while not runner.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield server
    finally:
        runner.should_exit = True
        await task


# --------------------------------------------------------------------------- stand-ins


@pytest.fixture(scope="module")
def standin_plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """A stand-in with a tool-call parser (no reasoning parser), API key on."""
    factory = StandinFactory(tmp_path_factory.mktemp("plain"))
    try:
        yield factory.launch("--tool-call-parser", "qwen25", "--context-length", "4096",
                             "--served-model-name", "judge-model")  # fmt: skip
    finally:
        factory.close()


@pytest.fixture(scope="module")
def standin_reasoning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """A stand-in with a reasoning parser and --enable-cache-report."""
    factory = StandinFactory(tmp_path_factory.mktemp("reasoning"))
    try:
        yield factory.launch("--reasoning-parser", "qwen3", "--tool-call-parser", "qwen25",
                             "--enable-cache-report")  # fmt: skip
    finally:
        factory.close()
