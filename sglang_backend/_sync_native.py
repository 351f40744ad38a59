"""The blocking twins of SGLang's native surface: a base class of :class:`SGLangModel`.

Each method runs its :class:`~sglang_backend.AsyncSGLangModel` namesake on the facade's
loop thread (the request is built and checked there by the same code, its errors translated
by the same translation); the parity test holds the two surfaces to the same names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, cast, overload

from ._facade_loop import FacadeLoop
from ._streams import GenerateStream
from ._sync_streams import SyncGenerateStream
from .model import AsyncSGLangModel
from .native import GenerateResult, LoRAUpdateResult, SamplingParams, UpdateWeightsResult
from .router import WorkerInfo

__all__ = ["SyncNativeSurface"]


class SyncNativeSurface:
    """The native endpoints, blocking; what they need of the facade is declared here."""

    # Set by SGLangModel.__init__.
    _async: AsyncSGLangModel
    _runtime: FacadeLoop

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Blocking :meth:`AsyncSGLangModel.tokenize`."""
        return self._runtime.portal.call(self._async.tokenize, text,
                                         add_special_tokens=add_special_tokens)

    def detokenize(self, tokens: list[int]) -> str:
        """Blocking :meth:`AsyncSGLangModel.detokenize`."""
        return self._runtime.portal.call(self._async.detokenize, tokens)

    def context_length(self) -> int:
        """Blocking :meth:`AsyncSGLangModel.context_length`."""
        return self._runtime.portal.call(self._async.context_length)

    # -- generate and abort ------------------------------------------------------------
    @overload
    def generate(
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
    def generate(
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
    ) -> SyncGenerateStream: ...
    def generate(
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
    ) -> GenerateResult | list[GenerateResult] | SyncGenerateStream:
        """Blocking :meth:`AsyncSGLangModel.generate` (a :class:`SyncGenerateStream` when
        streaming)."""
        # Both overloads at once: `stream` is only known at run time.
        generate = cast("Callable[..., Awaitable[GenerateResult | list[GenerateResult] | "
                        "GenerateStream]]", self._async.generate)
        result = self._runtime.portal.call(
            generate, text, input_ids=input_ids, sampling_params=sampling_params,
            return_logprob=return_logprob, top_logprobs_num=top_logprobs_num,
            logprob_start_len=logprob_start_len, lora_path=lora_path, rid=rid, stream=stream,
        )
        if isinstance(result, GenerateStream):
            return SyncGenerateStream(self._runtime.portal, result)
        return result

    def abort(self, rid: str) -> None:
        """Blocking :meth:`AsyncSGLangModel.abort`."""
        self._runtime.portal.call(self._async.abort, rid)

    def abort_all(self) -> None:
        """Blocking :meth:`AsyncSGLangModel.abort_all`."""
        self._runtime.portal.call(self._async.abort_all)

    def add_worker(self, url: str, api_key: str | None = None) -> str:
        """Blocking :meth:`AsyncSGLangModel.add_worker`."""
        return self._runtime.portal.call(self._async.add_worker, url, api_key)

    def remove_worker(self, worker_id: str) -> None:
        """Blocking :meth:`AsyncSGLangModel.remove_worker`."""
        self._runtime.portal.call(self._async.remove_worker, worker_id)

    def workers(self) -> list[WorkerInfo]:
        """Blocking :meth:`AsyncSGLangModel.workers`."""
        return self._runtime.portal.call(self._async.workers)

    @property
    def lora_adapters(self) -> dict[str, str]:
        """The adapters the model believes loaded (see :attr:`AsyncSGLangModel.lora_adapters`)."""
        return self._async.lora_adapters

    def load_lora_adapter(self, name: str, path: str, pinned: bool = False) -> LoRAUpdateResult:
        """Blocking :meth:`AsyncSGLangModel.load_lora_adapter`."""
        return self._runtime.portal.call(self._async.load_lora_adapter, name, path, pinned)

    def unload_lora_adapter(self, name: str) -> LoRAUpdateResult:
        """Blocking :meth:`AsyncSGLangModel.unload_lora_adapter`."""
        return self._runtime.portal.call(self._async.unload_lora_adapter, name)

    def update_weights_from_disk(self, model_path: str,
                                 load_format: str | None = None) -> UpdateWeightsResult:
        """Blocking :meth:`AsyncSGLangModel.update_weights_from_disk`."""
        return self._runtime.portal.call(self._async.update_weights_from_disk, model_path,
                                         load_format)

    def flush_cache(self) -> str:
        """Blocking :meth:`AsyncSGLangModel.flush_cache`."""
        return self._runtime.portal.call(self._async.flush_cache)

    def server_info(self) -> dict[str, Any]:
        """Blocking :meth:`AsyncSGLangModel.server_info`."""
        return self._runtime.portal.call(self._async.server_info)

    def model_info(self) -> dict[str, Any]:
        """Blocking :meth:`AsyncSGLangModel.model_info`."""
        return self._runtime.portal.call(self._async.model_info)

    def pause_generation(self, mode: Literal["abort", "retract", "in_place"] = "abort") -> None:
        """Blocking :meth:`AsyncSGLangModel.pause_generation`."""
        self._runtime.portal.call(self._async.pause_generation, mode)

    def continue_generation(self) -> None:
        """Blocking :meth:`AsyncSGLangModel.continue_generation`."""
        self._runtime.portal.call(self._async.continue_generation)

    def release_memory_occupation(self, tags: list[str] | None = None) -> None:
        """Blocking :meth:`AsyncSGLangModel.release_memory_occupation`."""
        self._runtime.portal.call(self._async.release_memory_occupation, tags)

    def resume_memory_occupation(self, tags: list[str] | None = None) -> None:
        """Blocking :meth:`AsyncSGLangModel.resume_memory_occupation`."""
        self._runtime.portal.call(self._async.resume_memory_occupation, tags)
