"""Developer sessions: nox -s tests | lint | typecheck | docs | bench | soak | compat."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite against the stand-in server (and the real sglang-router)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting checks."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "sglang_backend", "tests", "bench", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "sglang_backend")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site, warnings as errors."""
    session.install("-e", ".[dev]")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(session.create_tmp() + "/site"))


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks against the stand-in server (writes bench/results.json)."""
    session.install("-e", ".[dev]")
    session.run("python", "bench/lifecycle.py", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """The long reliability runs (opt-in)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "tests/reliability", "-m", "slow", "--timeout=1800", *session.posargs)
