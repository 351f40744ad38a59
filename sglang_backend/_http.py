"""The one HTTP stack of the process: whichever the installed openai SDK runs on.

openai 2.x runs on ``httpx``; openai 3.x on ``httpx2`` (its maintained continuation). The
library's own requests (health polls, ``/tokenize``, ``/server_info``, router registration) use
the same stack and share one connection pool with the SDK, so a process never loads both.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import urllib.parse
import urllib.request
from types import ModuleType
from typing import TYPE_CHECKING, Any

import openai

__all__ = [
    "ServerPool",
    "bearer_headers",
    "httpx",
    "loopback_mounts",
    "new_async_client",
    "new_sync_client",
    "new_sync_transport",
    "stack_name",
]


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


def bearer_headers(key: str | None) -> dict[str, str]:
    """The ``Authorization`` header that carries ``key`` to a server (empty without a key)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def loopback_mounts() -> dict[str, None]:
    """``mounts=`` that send loopback URLs to the client's own transport, never a proxy.

    An httpx client built with the default ``trust_env=True`` mounts a proxy transport for
    ``HTTP_PROXY``/``ALL_PROXY``, and those mounts win over ``transport=``: without these
    entries a proxied environment routes every request to a local server through the proxy.
    Remote URLs keep the environment's proxy.
    """
    return dict.fromkeys(("all://127.0.0.1", "all://localhost", "all://[::1]"))


def new_async_client(**kwargs: Any) -> httpx.AsyncClient:
    """An AsyncClient of the SDK's stack with the SDK's defaults (limits, redirects).

    Keep-alive on loopback makes every request after the first skip the TCP handshake.
    Loopback URLs never go through a proxy (:func:`loopback_mounts`).
    """
    kwargs["mounts"] = {**loopback_mounts(), **kwargs.get("mounts", {})}
    client: httpx.AsyncClient = openai.DefaultAsyncHttpxClient(**kwargs)
    return client


def new_sync_client(**kwargs: Any) -> httpx.Client:
    """The blocking counterpart of :func:`new_async_client` (loopback never proxied)."""
    kwargs["mounts"] = {**loopback_mounts(), **kwargs.get("mounts", {})}
    client: httpx.Client = openai.DefaultHttpxClient(**kwargs)
    return client


def _proxy_for(url: str) -> str | None:
    """The proxy the environment asks for ``url``, never one for a loopback server."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if host in _LOOPBACK or host.startswith("127.") or urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(parsed.scheme)


_LOOPBACK = frozenset({"localhost", "::1", "127.0.0.1"})


def new_sync_transport(url: str) -> httpx.HTTPTransport:
    """A blocking transport to the server at ``url`` (the SDK's limits; no proxy on loopback)."""
    return httpx.HTTPTransport(
        limits=openai.DEFAULT_CONNECTION_LIMITS, proxy=_proxy_for(url), trust_env=False
    )


class ServerPool:
    """The connections to one run of one server: an SDK-stack client and its transport.

    The server supervisor creates one per server run and closes it when the run ends, so
    keep-alive connections to a dead or stopped server never linger. ``client`` serves the
    SDK and the library's own requests; ``transport`` carries the requests of the leased
    clients handed to users (:meth:`AsyncSGLangModel.openai_client`). Loopback servers are
    never reached through a proxy, whatever ``HTTP_PROXY`` says.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self.transport = httpx.AsyncHTTPTransport(
            limits=openai.DEFAULT_CONNECTION_LIMITS, proxy=_proxy_for(url), trust_env=False
        )
        self.client: httpx.AsyncClient = new_async_client(transport=self.transport)
        self._lock = threading.Lock()
        self._sync: httpx.Client | None = None
        self._sync_transport: httpx.HTTPTransport | None = None
        self._closed = False

    def sync_client(self) -> httpx.Client:
        """The blocking twin of ``client`` for the facade's threads (built on first use).

        Once the run's pool is closed it raises ``ConnectError``: a late caller never opens
        connections to a server run that is over, and the request path treats it as a
        request that was never sent (admitted again, on the next run).
        """
        sync = self._sync
        if sync is not None:
            return sync
        with self._lock:
            if self._closed:
                raise httpx.ConnectError("this server run's connection pool is closed")
            if self._sync is None:
                self._sync_transport = new_sync_transport(self._url)
                self._sync = openai.DefaultHttpxClient(transport=self._sync_transport)
            return self._sync

    def sync_transport(self) -> httpx.HTTPTransport:
        """The blocking transport under :meth:`sync_client`, for the leased blocking clients
        (:meth:`SGLangModel.openai_client`); closed with the run like everything here."""
        self.sync_client()
        assert self._sync_transport is not None
        return self._sync_transport

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            sync, self._sync = self._sync, None
        await self.client.aclose()  # closes the transport too
        if sync is not None:
            # Closing drops its sockets at once; in-flight blocking requests on it fail.
            await asyncio.to_thread(sync.close)
