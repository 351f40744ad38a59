"""Shared pieces of the framework tests: a stand-in server config and a common schema."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import BaseModel

from sglang_backend import AsyncSGLangModel, ServerConfig

from ..conftest import MODEL

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
