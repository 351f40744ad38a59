"""Testing your own code with the stand-in SGLang server: a pytest fixture file to copy.

The stand-in (``sglang_backend.testing``) is a small CPU imitation of SGLang's server that
ships with the library (``pip install "sglang-backend[testing]"``): same command line,
startup phases, HTTP API, errors and streaming format, deterministic replies. Your tests run
the real library code paths — a real subprocess, real HTTP — without a GPU, and ``--standin-*``
flags reproduce the hard cases (slow load, failure at load, crash after N requests, slow
tokens).

Run it: ``python -m pytest examples/test_with_standin.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from sglang_backend import AsyncSGLangModel, ServerConfig, ServerStartError, SGLangModel
from sglang_backend.testing import standin_command

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def standin(*faults: str, **options: object) -> ServerConfig:
    """A ServerConfig that launches the stand-in instead of SGLang."""
    return ServerConfig(
        launch_command=tuple(standin_command()),
        extra_args=("--standin-token-delay", "0.001", *faults),
        startup_timeout=60.0,
        shutdown_timeout=5.0,
        **options,  # type: ignore[arg-type]
    )


# --- the code under test (in your project this lives in your package) ------------------------


async def summarize(model: AsyncSGLangModel, text: str) -> str:
    """Your application code: one chat call, with a fallback if the server cannot start."""
    try:
        reply = await model.run([{"role": "user", "content": f"Summarize: {text}"}], stream=False)
    except ServerStartError:
        return "(summary unavailable)"
    return (reply.choices[0].message.content or "").strip()


# --- fixtures ----------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def model() -> AsyncIterator[AsyncSGLangModel]:
    """An async model on a fresh stand-in server, stopped after the test."""
    async with AsyncSGLangModel(MODEL, server=standin(tool_call_parser="qwen")) as m:
        yield m


@pytest.fixture
def sync_model() -> Iterator[SGLangModel]:
    """The blocking twin, for code that is not async."""
    with SGLangModel(MODEL, server=standin()) as m:
        yield m


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_streaming_and_usage(model: AsyncSGLangModel) -> None:
    stream = await model.run([{"role": "user", "content": "stream please"}], stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream please" in text
    assert chunks[-1].usage is not None  # usage arrives in the final chunk


@pytest.mark.asyncio
async def test_summarize_returns_text(model: AsyncSGLangModel) -> None:
    summary = await summarize(model, "SGLang serves language models fast.")
    assert "SGLang serves language models fast." in summary  # the stand-in echoes the prompt


@pytest.mark.asyncio
async def test_summarize_survives_a_server_that_cannot_start() -> None:
    broken = standin("--standin-fail-at-load", "CUDA out of memory")
    model = AsyncSGLangModel(MODEL, server=broken)  # starts lazily, on the first run()
    try:
        assert await summarize(model, "anything") == "(summary unavailable)"
    finally:
        await model.aclose()


def test_sync_code_path(sync_model: SGLangModel) -> None:
    reply = sync_model.run([{"role": "user", "content": "ping"}])
    assert reply.choices[0].message.content  # type: ignore[union-attr]
    assert sync_model.token_counter.count_text("one two three") >= 3
