"""The one HTTP stack of the process: whichever the installed openai SDK runs on.

openai 2.x runs on ``httpx``; openai 3.x on ``httpx2`` (its maintained continuation). The
library's own requests (health polls, ``/tokenize``, ``/server_info``, router registration) use
the same stack and share one connection pool with the SDK, so a process never loads both.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

import openai

__all__ = ["httpx", "new_async_client", "stack_name"]


def _sdk_stack() -> ModuleType:
    for klass in openai.DefaultAsyncHttpxClient.__mro__:
        if klass.__name__ == "AsyncClient" and klass.__module__.split(".")[0] != "openai":
            return importlib.import_module(klass.__module__.split(".")[0])
    raise ImportError("cannot tell which HTTP stack the installed openai SDK runs on")


if TYPE_CHECKING:
    import httpx2 as httpx
else:
    httpx = _sdk_stack()

stack_name: str = httpx.__name__
"""``"httpx"`` or ``"httpx2"``."""


def new_async_client(**kwargs: Any) -> httpx.AsyncClient:
    """An AsyncClient of the SDK's stack with the SDK's defaults (limits, redirects).

    Keep-alive on loopback makes every request after the first skip the TCP handshake.
    """
    client: httpx.AsyncClient = openai.DefaultAsyncHttpxClient(**kwargs)
    return client
