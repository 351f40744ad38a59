"""The handle :meth:`ModelPool.model` returns."""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import TYPE_CHECKING, Any

import openai

from ._lease import Lease
from ._transport import LeasedAsyncTransport
from .model import AsyncSGLangModel
from .server import ServerState

if TYPE_CHECKING:
    from .pool import ModelPool, _Member

__all__ = ["PoolModel"]

# Model methods passed through without admission: they must never load a model.
_DIRECT = frozenset({"abort", "abort_all", "is_ready", "touch", "check_model_config", "sleep"})
# The pool owns its members' lives.
_REFUSED = frozenset({"aclose", "close", "cleanup"})


class PoolModel:
    """A member's handle: the model API, each call admitted (and its model loaded) by the pool."""

    def __init__(self, pool: ModelPool, member: _Member) -> None:
        self._pool = pool
        self._member = member

    @property
    def name(self) -> str:
        return self._member.name

    @property
    def model(self) -> AsyncSGLangModel:
        """The member's model (calls on it directly bypass the pool's admission)."""
        return self._member.model

    @property
    def request_model(self) -> str:
        return self._member.model.request_model

    @property
    def state(self) -> ServerState:
        return self._member.model.state

    @property
    def loaded(self) -> bool:
        return self._member.ready

    def __repr__(self) -> str:
        return f"PoolModel({self.name!r}, state={self.state.value})"

    def __getattr__(self, name: str) -> Any:
        """Any other model method; coroutine methods are admitted (and loaded) by the pool
        (``server_info``, ``flush_cache``, ``load_lora_adapter``, …)."""
        if name.startswith("_") or name in _REFUSED:
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r}"
                + (" (the pool stops its members: pool.aclose())" if name in _REFUSED else ""))
        attr = getattr(self._member.model, name)
        if name in _DIRECT or not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def admitted(*args: Any, **kwargs: Any) -> Any:
            async with self._pool._admitted(self._member):
                return await attr(*args, **kwargs)

        return admitted

    def lease(self) -> contextlib.AbstractAsyncContextManager[Lease]:
        """``async with handle.lease() as lease:`` — load if needed, admit one request."""
        return self._pool._admitted(self._member)

    async def start(self) -> None:
        """Load the model now (making room by policy) and wait until it is ready."""
        await self._pool._load_now(self._member)

    async def stop(self) -> None:
        """Unload the model now; the next request loads it again."""
        await self._pool.unload(self.name)

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`AsyncSGLangModel.run` once the model is loaded (a stream holds it loaded)."""
        async with self._pool._admitted(self._member):
            return await self._member.model.run(*args, **kwargs)

    async def generate(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`AsyncSGLangModel.generate` once the model is loaded."""
        async with self._pool._admitted(self._member):
            return await self._member.model.generate(*args, **kwargs)

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        async with self._pool._admitted(self._member):
            return await self._member.model.tokenize(text, add_special_tokens=add_special_tokens)

    def http_client(self, **options: Any) -> Any:
        """An ``AsyncClient`` (the SDK's stack) whose every request the pool admits."""
        # Each request loads the member and holds its pool slot until the body is closed.
        transport = LeasedAsyncTransport(self._member.model.request_path, leases=self.lease)
        client = openai.DefaultAsyncHttpxClient(
            transport=transport,
            base_url=LeasedAsyncTransport.BASE_URL.removesuffix("/v1"),
            trust_env=False, **options,
        )
        return client

    def openai_client(self, **options: Any) -> openai.AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` whose every request the pool admits (``model=`` is yours
        to set: :attr:`request_model`)."""
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", self._member.model.timeout)
        return openai.AsyncOpenAI(
            base_url=LeasedAsyncTransport.BASE_URL, api_key=LeasedAsyncTransport.PLACEHOLDER_KEY,
            http_client=self.http_client(), **options,
        )
