"""Shared pieces of the framework tests: a stand-in server config and a common schema."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from pydantic import BaseModel

from sglang_backend import AsyncSGLangModel, ServerConfig

from ..conftest import MODEL

# camel-ai 0.2.90 pins psutil<6, which has no Process.net_connections (the session-end leak
# check in tests/conftest.py uses it); psutil 5's name for the same call is connections.
if not hasattr(psutil.Process, "net_connections"):  # pragma: no cover - psutil < 6
    psutil.Process.net_connections = psutil.Process.connections  # type: ignore[attr-defined]

Standin = Callable[..., ServerConfig]


class CityWeather(BaseModel):
    """What the structured-output tests parse into."""

    city: str
    temperature_c: float
    sunny: bool


@pytest.fixture
def sglang_model(standin: Standin) -> AsyncSGLangModel:
    """An unstarted async model on the stand-in, with the tool-call parser on."""
    return AsyncSGLangModel(MODEL, server=standin(tool_call_parser="qwen"))


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "integrations"


def run_example(name: str) -> str:
    """Run examples/integrations/<name> on the stand-in; return its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("SGLANG_URL", "SGLANG_API_KEY")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=90,
        env=env, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
