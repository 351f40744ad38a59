"""What every framework integration needs from a model: one endpoint, leased requests.

Agent frameworks bring their own OpenAI client. :func:`managed_endpoint` starts the model's
server and hands out what such a client needs (``openai_base_url``, ``api_key``, the request
``model_name``, a ``ready()`` check) plus, better, an HTTP client whose every request is
*admitted by the model*: it waits for (re)launch after an idle stop, counts as in flight (the
server is never idle-stopped under a framework's request or open stream) and marks a crashed
server so the next request relaunches it. The server URL and key stay the same for the model's
whole life (the port is reserved), so a framework's client never needs rebuilding.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import openai

from .. import _http
from ..errors import ConfigError, ModelClosedError, RequestError

if TYPE_CHECKING:
    from ..model import AsyncSGLangModel
    from ..server import _Backend

__all__ = ["LeasedTransport", "ManagedEndpoint", "managed_endpoint", "missing_extra"]

logger = logging.getLogger("sglang_backend.integrations")

httpx = _http.httpx


def missing_extra(extra: str, framework: str) -> ImportError:
    """The ImportError an integration raises when its framework is not installed."""
    module = extra.replace("-", "_")
    return ImportError(
        f"sglang_backend.integrations.{module} needs {framework}: "
        f"pip install 'sglang-backend[{extra}]'"
    )


#: The host of the base URL given to clients built before the server has an address; the
#: transport sends their requests to the real server (and with its key) once it is up.
PLACEHOLDER_HOST = "sglang-backend.invalid"
PLACEHOLDER_KEY = "sglang-backend-placeholder-key"


def _retarget(request: Any, backend: _Backend) -> None:
    root = httpx.URL(backend.base_url)
    request.url = request.url.copy_with(scheme=root.scheme, host=root.host, port=root.port)
    request.headers["Host"] = root.netloc.decode("ascii")
    if backend.api_key:
        request.headers["Authorization"] = f"Bearer {backend.api_key}"
    else:
        request.headers.pop("Authorization", None)


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives the model's lease back when it is closed."""

    def __init__(self, inner: Any, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()


class LeasedTransport(httpx.AsyncBaseTransport):
    """An HTTP transport whose requests are admitted by an :class:`AsyncSGLangModel`.

    Each request acquires the model's server (starting or relaunching it if needed) and holds
    it until the response body is closed, exactly like the model's own requests.
    """

    def __init__(self, model: AsyncSGLangModel) -> None:
        self._model = model
        self._inner = httpx.AsyncHTTPTransport()

    async def _backend(self) -> _Backend:
        # The model's admission is not public API yet; this is the one place it is reached.
        return await self._model._get_backend()

    async def handle_async_request(self, request: Any) -> Any:
        backend = await self._backend()
        for attempt in range(2):
            token = await backend.acquire()
            released = False

            def release(backend: _Backend = backend) -> None:
                nonlocal released
                if not released:
                    released = True
                    backend.release()

            try:
                if request.url.host == PLACEHOLDER_HOST:
                    _retarget(request, backend)
                response = await self._inner.handle_async_request(request)
            except httpx.TransportError as exc:
                release()
                sent = not isinstance(exc, httpx.ConnectError)
                # Marks a dead server (the next request relaunches it); raises a typed
                # error when the request died with the server.
                retry = await backend.recover(token, exc, sent=sent)
                if retry and attempt == 0:
                    continue
                raise
            except BaseException:
                release()
                raise
            response.stream = _ReleasingStream(response.stream, release)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._inner.aclose()


class ManagedEndpoint:
    """A started model seen as an OpenAI-compatible endpoint.

    Attributes:
        model: the :class:`~sglang_backend.AsyncSGLangModel` behind it.
        model_name: the ``model`` value requests must carry.
        openai_base_url: ``http://host:port/v1`` (what OpenAI clients call ``base_url``).
        api_key: the key the server expects (``Authorization: Bearer``).
    """

    def __init__(self, model: AsyncSGLangModel) -> None:
        self.model = model
        self._clients: list[Any] = []
        self._native_client: Any = None
        self._context_length: int | None = None

    @property
    def model_name(self) -> str:
        name = getattr(self.model, "_request_model", None)
        return name if isinstance(name, str) else self.model.model_type

    @property
    def base_url(self) -> str:
        """The server root (no ``/v1``)."""
        url = self.model.base_url
        if not url:
            raise ModelClosedError("the model has no server URL (not started, or closed)")
        return url

    @property
    def started(self) -> bool:
        """True once the server has an address (it may be idle-stopped; it relaunches there)."""
        return bool(self.model.base_url)

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def api_key(self) -> str:
        # A launched server always has a key; a connected one may have none, but OpenAI
        # clients insist on some string.
        return self.model.api_key or "EMPTY"

    def lazy_openai_client(self, **options: Any) -> openai.AsyncOpenAI:
        """Like :meth:`openai_client`, usable before the server starts: its first request
        starts the server (``base_url`` is a placeholder the transport retargets)."""
        if self.started:
            return self.openai_client(**options)
        options.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(
            base_url=f"http://{PLACEHOLDER_HOST}/v1",
            api_key=PLACEHOLDER_KEY,
            http_client=self.http_client(),
            **options,
        )

    async def ready(self) -> bool:
        """True when the server answers ``/health`` with 200 right now."""
        return await self.model.is_ready()

    def _auth(self) -> dict[str, str]:
        key = self.model.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _native(self, path: str, body: dict[str, Any]) -> Any:
        if self._native_client is None:
            self._native_client = self.http_client()
        await self.model.start()
        response = await self._native_client.post(
            f"{self.base_url}{path}", json=body, headers=self._auth()
        )
        if response.status_code != 200:
            raise RequestError(
                f"{path} answered {response.status_code}: {response.text[:200]}",
                status_code=response.status_code,
            )
        return response.json()

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` under the served model's tokenizer (no special tokens)."""
        data = await self._native("/tokenize", {"prompt": text, "add_special_tokens": False})
        self._context_length = data.get("max_model_len") or self._context_length
        return list(data["tokens"])

    async def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens`` under the served model's tokenizer."""
        data = await self._native("/detokenize", {"tokens": list(tokens)})
        return str(data["text"])

    async def context_length(self) -> int:
        """The served model's context window (``max_model_len``)."""
        if self._context_length is None:
            await self.tokenize("")
        assert self._context_length is not None
        return int(self._context_length)

    def http_client(self) -> Any:
        """A new async HTTP client (the openai SDK's stack) whose requests the model admits.

        Closed with the endpoint.
        """
        client = openai.DefaultAsyncHttpxClient(transport=LeasedTransport(self.model))
        self._clients.append(client)
        return client

    def openai_client(self, **options: Any) -> openai.AsyncOpenAI:
        """An ``AsyncOpenAI`` on this endpoint over :meth:`http_client`.

        ``max_retries`` defaults to 0: admission already waits for a (re)start.
        """
        options.setdefault("max_retries", 0)
        client = openai.AsyncOpenAI(
            base_url=self.openai_base_url,
            api_key=self.api_key,
            http_client=self.http_client(),
            **options,
        )
        return client

    async def aclose(self) -> None:
        clients, self._clients = self._clients, []
        self._native_client = None
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()

    def __repr__(self) -> str:
        return f"ManagedEndpoint({self.model_name!r}, {self.model.base_url!r})"

    async def __aenter__(self) -> ManagedEndpoint:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _as_async_model(model: Any) -> AsyncSGLangModel:
    from ..model import AsyncSGLangModel

    if isinstance(model, AsyncSGLangModel):
        return model
    raise ConfigError(
        f"expected an AsyncSGLangModel, got {type(model).__name__}; frameworks that run on "
        "asyncio need the async model (a sync SGLangModel's server lives on its own loop)"
    )


@contextlib.asynccontextmanager
async def managed_endpoint(
    model: AsyncSGLangModel, *, close: bool = True
) -> AsyncIterator[ManagedEndpoint]:
    """Start ``model``'s server and yield it as a :class:`ManagedEndpoint`.

    On exit the endpoint's HTTP clients are closed and, with ``close=True`` (the default), the
    model too (its server is stopped). Works in launch and connect (``url=``) mode alike.
    """
    async_model = _as_async_model(model)
    endpoint = ManagedEndpoint(async_model)
    try:
        await async_model.start()
        yield endpoint
    finally:
        try:
            await endpoint.aclose()
        finally:
            if close:
                await async_model.aclose()
