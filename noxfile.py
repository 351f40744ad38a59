"""Developer sessions. ``nox -l`` lists them; ``nox`` runs lint, typecheck, tests and docs.

tests        the test suite (stand-in server + real sglang-router)
lint         ruff
typecheck    mypy --strict on the package
docs         mkdocs build --strict
bench        side-by-side benchmarks (bench/run.py) -> bench/results.json, docs/benchmarks.md
soak         the long reliability runs (opt-in)
compat       the suite against both openai generations and the dependency range ends
sglang-real  command lines and protocol judged by real SGLang code (sglang 0.5.23, CPU)
integrations agent frameworks (CAMEL, pydantic-ai, LangChain, OpenAI Agents) on the stand-in
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite against the stand-in server (and the real sglang-router)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff lint."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "sglang_backend", "tests", "bench", "examples", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "sglang_backend")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site, warnings as errors."""
    session.install("-e", ".[dev]")
    session.run("mkdocs", "build", "--strict", "--site-dir", session.create_tmp() + "/site")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks against the stand-in server."""
    session.install("-e", ".[dev,bench]")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """The long reliability runs (opt-in)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "tests/reliability", "--soak", "--timeout=3600", *session.posargs)


# sglang 0.5.23 on CPU: its argument parser and OpenAI protocol models judge our command lines
# and the stand-in (see shared/REAL_SGLANG.md). --no-deps: its metadata pins CUDA packages.
SGLANG_REAL_DEPS = [
    "torch==2.13.0", "triton", "numpy", "orjson", "psutil", "pybase64", "requests", "packaging",
    "pillow", "starlette", "msgspec", "pydantic", "pyzmq", "tqdm", "ipython", "aiohttp",
    "huggingface_hub", "openai==2.8.0",
]
# What SGLang's function_call parsers import (the tool-format judge). Without their own
# dependencies: xgrammar's would pull a CUDA torch of several GB over the CPU one above.
SGLANG_PARSER_DEPS = [
    "partial_json_parser==0.2.1.1.post7", "regex==2026.11.19", "xgrammar==0.2.9",
    "apache-tvm-ffi==0.1.15.post2", "transformers==5.25.0", "tokenizers==0.23.3",
    "safetensors==0.8.0",
]


@nox.session(name="sglang-real", python=PYTHON)
def sglang_real(session: nox.Session) -> None:
    """Command lines and protocol judged by real SGLang code (sglang 0.5.23 on CPU)."""
    session.install("--no-deps", "sglang==0.5.23")
    session.install(*SGLANG_REAL_DEPS)
    session.install("--no-deps", *SGLANG_PARSER_DEPS)
    session.install("-e", ".[testing]", "pytest", "pytest-asyncio", "pytest-timeout")
    session.run("pytest", "tests/sglang_real", "-p", "no:cacheprovider", *session.posargs)


INTEGRATIONS = ["camel", "pydantic_ai", "langchain", "openai_agents"]


@nox.session(python=PYTHON)
@nox.parametrize("framework", INTEGRATIONS)
def integrations(session: nox.Session, framework: str) -> None:
    """One agent framework per venv, on a server the library launches (the stand-in)."""
    extra = framework.replace("_", "-")
    session.install("-e", f".[testing,{extra}]", "pytest", "pytest-asyncio", "pytest-timeout")
    session.run("pytest", f"tests/integrations/test_{framework}.py", "-p", "no:cacheprovider",
                *session.posargs)


# The dependency matrix the package claims: both openai generations (2.x on httpx, as the
# [server] extra gets through sglang's openai==2.8.0 pin; 3.x on httpx2), the oldest and
# newest pydantic 2.x / anyio 4.x the ranges admit, and the lowest and highest Python here.
def _interpreter(version: str) -> str:
    """``python3.X`` on PATH, or pyenv's build of it (pyenv shims only answer for the
    versions that are selected, so look in its versions directory too)."""
    if shutil.which(f"python{version}") and subprocess.run(
        [f"python{version}", "-c", ""], capture_output=True, check=False
    ).returncode == 0:
        return version
    builds = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    return str(builds[-1]) if builds else version


COMPAT = [
    nox.param("3.11", ("openai==2.8.0", "pydantic==2.7.0", "anyio==4.4.0"), id="openai2.8-oldest"),
    nox.param("3.11", ("openai>=3,<4", "pydantic>=2.14,<3", "anyio>=4.16,<5"), id="openai3-newest"),
    nox.param(_interpreter("3.10"), (), id="py3.10-lowest"),
    nox.param(_interpreter("3.13"), (), id="py3.13-highest"),
]


@nox.session
@nox.parametrize("python,pins", COMPAT)
def compat(session: nox.Session, pins: tuple[str, ...]) -> None:
    """The whole suite on one point of the dependency matrix."""
    session.install("-e", ".[test]", *pins)
    session.run(
        "python", "-c",
        "import importlib.metadata as m, sys; from sglang_backend import _http; "
        "print(sys.version.split()[0], 'stack:', _http.stack_name, *(f'{p}=={m.version(p)}' "
        "for p in ('openai', _http.stack_name, 'pydantic', 'anyio')))",
    )
    session.run("pytest", "-p", "no:cacheprovider", *session.posargs)
