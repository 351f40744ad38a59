"""Reliability suite fixtures: the --soak switch (the option itself is in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    """True under ``pytest --soak`` (``nox -s soak``): run the long forms."""
    return bool(request.config.getoption("--soak"))


@pytest.fixture
def soak_only(soak: bool) -> None:
    """Skip the test unless ``--soak`` was given."""
    if not soak:
        pytest.skip("long form: run with --soak (nox -s soak)")
