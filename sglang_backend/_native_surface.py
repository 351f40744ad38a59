"""SGLang's native surface of :class:`~sglang_backend.model.AsyncSGLangModel`: tokenize,
``/generate``, abort, LoRA adapters, weights, cache, memory, pause, a group's workers.

A base class of the model, kept apart so model.py holds its life and its chat. Each method
builds and checks its request in :mod:`sglang_backend.native` before any I/O and sends it as
one ``send`` through the model's request path (its lease and its one error translation).
Admin routes (``native.ADMIN_ENDPOINTS``) carry ``ServerConfig.admin_api_key`` when set and
go to every worker of a router group (routers do not forward them).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from typing import Any, Literal, overload

from . import _http
from ._lease import Lease, RequestPath, direct_headers, direct_urls
from ._streams import GenerateStream, LeasedStream
from ._translate import check_response
from .config import ServerConfig
from .errors import ConfigError, InvalidRequestError, ModelClosedError, RequestError
from .native import (
    ADMIN_ENDPOINTS,
    GenerateRequest,
    GenerateResult,
    LoRAUpdateResult,
    SamplingParams,
    UpdateWeightsResult,
    build_generate,
    check_adapter_name,
    check_memory_tags,
    check_native,
    check_rid,
    parse_generate,
)
from .router import WorkerInfo
from .server import LaunchedServer, ServerState

__all__ = ["NativeSurface"]


class NativeSurface:
    """The native endpoints; what they need of the model is declared here."""

    # Set by AsyncSGLangModel.__init__.
    _path: RequestPath
    _timeout: float
    _closed: bool
    _streams: weakref.WeakSet[LeasedStream[Any]]
    _server_config: ServerConfig | None
    _context_length: int | None
    # LoRA adapters loaded at run time (name -> (path, pinned)), loaded again after every
    # relaunch; launch-time adapters (lora_paths) unloaded since, unloaded again.
    _lora_loaded: dict[str, tuple[str, bool]]
    _lora_unloaded: set[str]
    _lora_hooked: bool

    @property
    def server(self) -> LaunchedServer | None:
        raise NotImplementedError  # the model's

    def _request_timeout(self) -> _http.httpx.Timeout:
        raise NotImplementedError  # the model's

    # -- the workers of a router group ----------------------------------------------------
    def _group_server(self) -> LaunchedServer:
        server = self.server
        if server is None:
            raise ConfigError("workers are managed by a launched router group "
                              "(ServerConfig(replicas=N) or worker_urls=[...]), not in connect mode")
        return server

    async def add_worker(self, url: str, api_key: str | None = None) -> str:
        """Put a running SGLang server at ``url`` (not launched by the library) into the router
        group's rotation; return its worker id.

        ``api_key=None`` sends the group's key. Returns once the router lists it; it is then
        health-checked and reported (events ``worker_unhealthy`` / ``worker_healthy``). Lasts
        until the group's next relaunch, which starts from ``ServerConfig`` again.
        """
        return await self._group_server().add_worker(url, api_key)

    async def remove_worker(self, worker_id: str) -> None:
        """Take a worker out of rotation: the router drains it (requests in flight finish),
        then a local worker is stopped; a worker elsewhere keeps running (``worker_removed``)."""
        await self._group_server().remove_worker(worker_id)

    async def workers(self) -> list[WorkerInfo]:
        """Every worker of the group: the router's id, URL, local or remote, healthy, and
        requests in flight as the router counts them (as last polled, every second)."""
        return self._group_server().workers()

    # -- SGLang's native endpoints --------------------------------------------------------
    async def _native(self, path: str, body: Mapping[str, Any] | None = None,
                      *, method: str = "POST", direct: bool = False) -> Any:
        """Send one native request under a lease; the decoded JSON (or text) answer.

        ``direct``: to a server that runs it even behind a router (routers answer 404 for
        ``/tokenize``, ``/detokenize`` and the like).
        """
        async def send(lease: Lease) -> Any:
            url, headers = lease.direct() if direct else (lease.base_url, lease.headers)
            return await lease.http.request(method, f"{url}{path}", json=body,
                                            headers=headers, timeout=self._request_timeout())

        response = check_response(await self._path.call(send))
        try:
            return response.json()
        except ValueError:
            return response.text

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text`` under the served model's tokenizer (``/tokenize``)."""
        if not isinstance(text, str):
            raise InvalidRequestError(f"text must be a str, got {type(text).__name__}")
        data = await self._native("/tokenize", {"prompt": text,
                                                "add_special_tokens": add_special_tokens},
                                  direct=True)
        self._context_length = data.get("max_model_len") or self._context_length
        return [int(token) for token in data["tokens"]]

    async def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens`` under the served model's tokenizer (``/detokenize``)."""
        data = await self._native("/detokenize", {"tokens": [int(t) for t in tokens]},
                                  direct=True)
        return str(data["text"])

    async def context_length(self) -> int:
        """The served model's context window (``max_model_len``)."""
        if self._context_length is None:
            await self.tokenize("")
        if self._context_length is None:
            raise RequestError("the server does not report its context length")
        return int(self._context_length)

    # -- generate and abort ------------------------------------------------------------
    @overload
    async def generate(
        self,
        text: str | list[str] | None = None,
        *,
        input_ids: list[int] | list[list[int]] | None = None,
        sampling_params: SamplingParams | Mapping[str, Any] | None = None,
        return_logprob: bool = False,
        top_logprobs_num: int | None = None,
        logprob_start_len: int | None = None,
        lora_path: str | None = None,
        rid: str | list[str] | None = None,
        stream: Literal[False] = False,
    ) -> GenerateResult | list[GenerateResult]: ...
    @overload
    async def generate(
        self,
        text: str | list[str] | None = None,
        *,
        input_ids: list[int] | list[list[int]] | None = None,
        sampling_params: SamplingParams | Mapping[str, Any] | None = None,
        return_logprob: bool = False,
        top_logprobs_num: int | None = None,
        logprob_start_len: int | None = None,
        lora_path: str | None = None,
        rid: str | list[str] | None = None,
        stream: Literal[True],
    ) -> GenerateStream: ...
    async def generate(
        self,
        text: str | list[str] | None = None,
        *,
        input_ids: list[int] | list[list[int]] | None = None,
        sampling_params: SamplingParams | Mapping[str, Any] | None = None,
        return_logprob: bool = False,
        top_logprobs_num: int | None = None,
        logprob_start_len: int | None = None,
        lora_path: str | None = None,
        rid: str | list[str] | None = None,
        stream: bool = False,
    ) -> GenerateResult | list[GenerateResult] | GenerateStream:
        """SGLang's native ``/generate``.

        Args:
            text: a prompt, or a list of prompts (a batch); or pass ``input_ids``.
            input_ids: token ids (a list), or a list of lists (a batch).
            sampling_params: :class:`~sglang_backend.native.SamplingParams` or a dict with
                SGLang's names (``max_new_tokens``, ``temperature``, ``n``, ``regex``, …);
                unknown keys raise :class:`InvalidRequestError` before any I/O.
            return_logprob: return token logprobs in ``meta_info``.
            top_logprobs_num: how many top alternatives per token (with ``return_logprob``).
            logprob_start_len: the prompt position logprobs start at.
            lora_path: the name of a loaded LoRA adapter to generate with.
            rid: the request id (generated, 32 hex, unless given; a list for a batch). A
                cancelled call is aborted on the server by it.
            stream: return a :class:`GenerateStream` of chunks (a batch or ``n > 1``
                interleaves its outputs, each chunk naming its ``index``).

        Returns:
            a :class:`~sglang_backend.native.GenerateResult`; a list of them for a batch or
            ``n > 1``; a :class:`GenerateStream` with ``stream=True``.
        """
        if self._closed:
            raise ModelClosedError("the model is closed")
        if lora_path is not None:
            self._check_lora_on("lora_path")
        request = build_generate(
            text, input_ids=input_ids, sampling_params=sampling_params,
            return_logprob=return_logprob, top_logprobs_num=top_logprobs_num,
            logprob_start_len=logprob_start_len, lora_path=lora_path, rid=rid, stream=stream,
            loaded_adapters=self._known_adapters(),
        )
        if request.stream:
            return await self._generate_stream(request)

        async def send(lease: Lease) -> Any:
            return await lease.http.post(f"{lease.base_url}/generate", json=request.body,
                                         headers=lease.headers, timeout=self._timeout)

        response = check_native(await self._path.call(send, rid=request.rids))
        return parse_generate(request, response.json())

    async def _generate_stream(self, request: GenerateRequest) -> GenerateStream:
        async def send(lease: Lease) -> _http.httpx.Response:
            http = lease.http
            response = await http.send(
                http.build_request("POST", f"{lease.base_url}/generate", json=request.body,
                                   headers=lease.headers, timeout=self._timeout),
                stream=True,
            )
            if response.status_code >= 400:  # refused before streaming: a plain JSON error
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                check_native(response)
            return response

        response, lease = await self._path.open(send, rid=request.rids)
        return GenerateStream(response, lease, request.rids, path=self._path,
                              registry=self._streams)

    async def abort(self, rid: str) -> None:
        """Abort the request ``rid`` on the server (every worker behind a router)."""
        rid = check_rid(rid)
        if self._idle_launch():
            return  # no server runs: nothing to abort
        await self._path.call(lambda lease: self._path.abort(lease, {"rid": rid}))

    async def abort_all(self) -> None:
        """Abort every request the server runs (``abort_all``; every worker behind a router)."""
        if self._idle_launch():
            return
        await self._path.call(
            lambda lease: self._path.abort(lease, {"rid": "", "abort_all": True}))

    # -- LoRA adapters --------------------------------------------------------------------
    @property
    def lora_adapters(self) -> dict[str, str]:
        """The adapters this model believes loaded, name -> path: ``ServerConfig.lora_paths``
        and those loaded with :meth:`load_lora_adapter`, less those unloaded."""
        config = self._server_config
        static = config.lora_paths if config is not None else {}
        names = {n: p for n, p in static.items() if n not in self._lora_unloaded}
        names.update({n: p for n, (p, _) in self._lora_loaded.items()})
        return names

    async def load_lora_adapter(self, name: str, path: str, pinned: bool = False) -> LoRAUpdateResult:
        """Load a LoRA adapter (``/load_lora_adapter``); requests then select it by ``name``.

        In launch mode it is loaded again after every relaunch (idle stop, crash) before the
        first request is admitted. Needs ``ServerConfig(enable_lora=True)``.
        """
        if not isinstance(name, str) or not name or set(name) & set("=:/ "):
            raise InvalidRequestError(
                f"name must be a non-empty adapter name without '=', ':', '/' or spaces, got {name!r}")
        if not isinstance(path, str) or not path:
            raise InvalidRequestError(f"path must be a non-empty path or Hub id, got {path!r}")
        if not isinstance(pinned, bool):
            raise InvalidRequestError(f"pinned must be a bool, got {pinned!r}")
        self._check_lora_on("load_lora_adapter")
        data = await self._each_server(
            "/load_lora_adapter", {"lora_name": name, "lora_path": path, "pinned": pinned})
        result = LoRAUpdateResult.model_validate(data)
        self._lora_loaded[name] = (path, pinned)
        self._lora_unloaded.discard(name)
        self._keep_adapters()
        return result

    async def unload_lora_adapter(self, name: str) -> LoRAUpdateResult:
        """Unload a LoRA adapter (``/unload_lora_adapter``); it stays unloaded after relaunches."""
        self._check_lora_on("unload_lora_adapter")
        name = check_adapter_name(name, self._known_adapters())
        data = await self._each_server("/unload_lora_adapter", {"lora_name": name})
        result = LoRAUpdateResult.model_validate(data)
        self._lora_loaded.pop(name, None)
        config = self._server_config
        if config is not None and name in config.lora_paths:
            self._lora_unloaded.add(name)
        self._keep_adapters()
        return result

    def _known_adapters(self) -> set[str] | None:
        # Launch mode knows what it loaded; a server it connects to judges by itself.
        return set(self.lora_adapters) if self._server_config is not None else None

    def _check_lora_on(self, what: str) -> None:
        config = self._server_config
        if config is not None and not config.lora_enabled:
            raise InvalidRequestError(
                f"{what}: LoRA is off on this server; set ServerConfig(enable_lora=True) "
                "(or lora_paths)")

    def _keep_adapters(self) -> None:
        server = self.server
        if server is not None and not self._lora_hooked:
            server.add_after_ready(self._restore_adapters)
            self._lora_hooked = True

    async def _restore_adapters(self, server: LaunchedServer) -> None:
        """After a relaunch, before admission: the run-time adapter changes again."""
        config = self._server_config
        unload = sorted(self._lora_unloaded & set(config.lora_paths if config else {}))
        if not (unload or self._lora_loaded):
            return
        client = server.pool.client
        for url in direct_urls(server):
            headers = direct_headers(server, url, admin=True)
            for name in unload:
                check_native(await client.post(f"{url}/unload_lora_adapter",
                                               json={"lora_name": name}, headers=headers,
                                               timeout=self._timeout))
            for name, (path, pinned) in self._lora_loaded.items():
                check_native(await client.post(
                    f"{url}/load_lora_adapter",
                    json={"lora_name": name, "lora_path": path, "pinned": pinned},
                    headers=headers, timeout=self._timeout))

    # -- weights, cache, memory, pause ------------------------------------------------------
    async def update_weights_from_disk(self, model_path: str,
                                       load_format: str | None = None) -> UpdateWeightsResult:
        """Load new weights in place (``/update_weights_from_disk``). A relaunch loads the
        launch ``model_path`` again."""
        if not isinstance(model_path, str) or not model_path:
            raise InvalidRequestError(f"model_path must be a non-empty path, got {model_path!r}")
        body: dict[str, Any] = {"model_path": model_path}
        if load_format is not None:
            if not isinstance(load_format, str) or not load_format:
                raise InvalidRequestError(f"load_format must be a non-empty str, got {load_format!r}")
            body["load_format"] = load_format
        return UpdateWeightsResult.model_validate(
            await self._each_server("/update_weights_from_disk", body))

    async def flush_cache(self) -> str:
        """Flush the radix (prefix) cache (``/flush_cache``); refused (400) while requests run."""
        return str(await self._each_server("/flush_cache", None))

    async def server_info(self) -> dict[str, Any]:
        """``/server_info``: the server's arguments and state."""
        data = await self._native("/server_info", method="GET")
        return dict(data) if isinstance(data, Mapping) else {"info": data}

    async def model_info(self) -> dict[str, Any]:
        """``/model_info``: the served model's path, type and capabilities."""
        data = await self._native("/model_info", method="GET")
        return dict(data) if isinstance(data, Mapping) else {"info": data}

    async def pause_generation(self, mode: Literal["abort", "retract", "in_place"] = "abort") -> None:
        """Pause the scheduler (``/pause_generation``); ``mode`` says what happens to running
        requests (SGLang's default ``abort`` aborts them)."""
        if mode not in ("abort", "retract", "in_place"):
            raise InvalidRequestError(f"mode must be abort, retract or in_place, got {mode!r}")
        await self._each_server("/pause_generation", {"mode": mode})

    async def continue_generation(self) -> None:
        """Resume a paused scheduler (``/continue_generation``)."""
        await self._each_server("/continue_generation", {})

    async def release_memory_occupation(self, tags: list[str] | None = None) -> None:
        """Release GPU memory (``kv_cache``, ``weights``, ``cuda_graph``; None: all) while the
        process stays up; generation waits until :meth:`resume_memory_occupation`."""
        await self._each_server("/release_memory_occupation", check_memory_tags(tags))

    async def resume_memory_occupation(self, tags: list[str] | None = None) -> None:
        """Take the memory released by :meth:`release_memory_occupation` back."""
        await self._each_server("/resume_memory_occupation", check_memory_tags(tags))

    async def _each_server(self, path: str, body: Mapping[str, Any] | None) -> Any:
        """POST to every server of the lease (each worker of a router group), with the admin
        key on admin routes; the first server's decoded answer."""
        if self._closed:
            raise ModelClosedError("the model is closed")

        admin = path in ADMIN_ENDPOINTS

        async def send(lease: Lease) -> list[Any]:
            return list(await asyncio.gather(*(
                lease.http.post(f"{url}{path}", json=body, timeout=self._timeout,
                                headers=lease.direct_headers(url, admin=admin))
                for url in lease.direct_urls)))

        responses = [check_native(r) for r in await self._path.call(send)]
        try:
            return responses[0].json()
        except ValueError:
            return responses[0].text

    def _idle_launch(self) -> bool:
        """Launch mode with no server running (an abort then has nothing to stop)."""
        server = self.server
        if self._server_config is None:
            return False
        return server is None or server.state is not ServerState.READY
