"""SGLang's native API: typed request building and response models, shared by async and sync.

Everything here is pure: it validates and builds request bodies before any I/O, and parses
answers. :class:`~sglang_backend.model.AsyncSGLangModel` sends them (``generate``, ``abort``,
the LoRA, weights and memory calls); :class:`~sglang_backend.sync.SGLangModel` delegates.

Field names are SGLang 0.5.23's own (``python/sglang/srt/managers/io_struct.py``
``GenerateReqInput`` and ``sampling/sampling_params.py``), so bodies pass SGLang's request
classes unchanged.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ._translate import check_response, server_message, status_error
from ._validation import validation_problems
from .errors import BadRequestError, InvalidRequestError, RequestError

__all__ = [
    "ADMIN_ENDPOINTS",
    "MEMORY_TAGS",
    "FinishReason",
    "GenerateChunk",
    "GenerateRequest",
    "GenerateResult",
    "LoRAUpdateResult",
    "MetaInfo",
    "SamplingParams",
    "UpdateWeightsResult",
    "build_generate",
    "check_adapter_name",
    "check_memory_tags",
    "check_native",
    "check_rid",
    "new_rid",
    "parse_generate",
    "stream_error",
]

ADMIN_ENDPOINTS: frozenset[str] = frozenset(
    {
        "/abort_request",
        "/flush_cache",
        "/load_lora_adapter",
        "/unload_lora_adapter",
        "/update_weights_from_disk",
        "/release_memory_occupation",
        "/resume_memory_occupation",
        "/pause_generation",
        "/continue_generation",
    }
)
"""Routes SGLang 0.5.23 marks ``AuthLevel.ADMIN_OPTIONAL``: with ``--admin-api-key`` set they
take the admin key (the ordinary key is refused with 401); without it, the ordinary key."""

_RID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


def new_rid() -> str:
    """A fresh request id: 32 hex digits, as SGLang generates them."""
    return secrets.token_hex(16)


def _invalid(exc: ValidationError, what: str, allowed: Collection[str] = ()) -> InvalidRequestError:
    problems = validation_problems(exc, unknown=f"unknown {what} key",
                                   allowed_label="SGLang's keys are", allowed=allowed,
                                   field_prefix=f"{what}.")
    return InvalidRequestError("; ".join(problems))


class SamplingParams(BaseModel):
    """``sampling_params`` of ``/generate`` with SGLang's names; unknown keys are refused.

    ``None`` leaves SGLang's default (``max_new_tokens`` 128, ``temperature`` 1.0, …).
    ``json_schema`` may be given as a dict; it is sent as the JSON string SGLang expects.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int | None = Field(default=None, ge=0)
    min_new_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stop_regex: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    no_stop_trim: bool | None = None
    json_schema: str | dict[str, Any] | None = None
    regex: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    logit_bias: dict[str, float] | None = None
    sampling_seed: int | None = None
    custom_params: dict[str, Any] | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _invalid(exc, "sampling_params", type(self).model_fields) from None

    @model_validator(mode="after")
    def _one_constraint(self) -> SamplingParams:
        set_ = [k for k in ("json_schema", "regex", "ebnf", "structural_tag")
                if getattr(self, k) is not None]
        if len(set_) > 1:
            raise ValueError(f"only one of {', '.join(set_)} may be set")
        if (self.min_new_tokens is not None and self.max_new_tokens is not None
                and self.min_new_tokens > self.max_new_tokens):
            raise ValueError("min_new_tokens must be <= max_new_tokens")
        return self

    @classmethod
    def of(cls, value: SamplingParams | Mapping[str, Any] | None) -> SamplingParams:
        """Validate a dict (or pass a ``SamplingParams`` through)."""
        if value is None:
            return cls()
        if isinstance(value, SamplingParams):
            return value
        if not isinstance(value, Mapping):
            raise InvalidRequestError(
                f"sampling_params must be a mapping or SamplingParams, got {type(value).__name__}"
            )
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise InvalidRequestError(f"sampling_params keys must be strings, got {bad!r}")
        return cls(**value)

    def wire(self) -> dict[str, Any]:
        """The JSON object sent to SGLang (unset fields left out)."""
        body = self.model_dump(exclude_none=True)
        if isinstance(body.get("json_schema"), dict):
            body["json_schema"] = json.dumps(body["json_schema"])
        return body


class FinishReason(BaseModel):
    """``meta_info.finish_reason``: ``type`` is ``stop``, ``length`` or ``abort``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    matched: int | str | None = None
    length: int | None = None
    message: str | None = None
    status_code: int | None = None
    err_type: str | None = None


class MetaInfo(BaseModel):
    """``meta_info`` as SGLang names it (further keys SGLang adds are kept as extras).

    With ``return_logprob``, the ``*_logprobs`` lists hold SGLang's tuples
    ``(logprob, token_id, text_or_None)``; the ``*_top_logprobs`` lists hold one list of such
    tuples per position (``None`` where SGLang has none).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int | None = None
    weight_version: str | None = None
    e2e_latency: float | None = None
    input_token_logprobs: list[Any] | None = None
    output_token_logprobs: list[Any] | None = None
    input_top_logprobs: list[Any] | None = None
    output_top_logprobs: list[Any] | None = None


class GenerateResult(BaseModel):
    """One output of ``/generate``: ``text``, ``output_ids`` (when the server gives them) and
    ``meta_info``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    text: str = ""
    output_ids: list[int] | None = None
    meta_info: MetaInfo

    @property
    def rid(self) -> str:
        """The request id SGLang reports (``meta_info.id``)."""
        return self.meta_info.id

    @property
    def finish_reason(self) -> str | None:
        """``meta_info.finish_reason.type`` (``stop``, ``length``, ``abort``), None while running."""
        reason = self.meta_info.finish_reason
        return reason.type if reason is not None else None


class GenerateChunk(GenerateResult):
    """One event of a ``/generate`` stream. As SGLang sends them, ``text`` and ``output_ids``
    are cumulative; ``delta`` is the text this event added. A streamed batch or ``n > 1``
    interleaves its outputs, each event naming its output by ``index``."""

    index: int = 0
    delta: str = ""


class GenerateRequest:
    """A validated ``/generate`` request: its JSON body and the ids it runs under."""

    __slots__ = ("batched", "body", "count", "rids", "stream")

    def __init__(self, body: dict[str, Any], rids: list[str], *, batched: bool,
                 count: int, stream: bool) -> None:
        self.body = body
        self.rids = rids
        self.batched = batched
        self.count = count
        self.stream = stream

    @property
    def many(self) -> bool:
        """Whether the answer is a list (a batch, or ``n > 1``)."""
        return self.batched or self.count > 1

    def __repr__(self) -> str:
        return f"GenerateRequest(rids={self.rids!r}, batched={self.batched}, count={self.count})"


def check_rid(rid: object, field: str = "rid") -> str:
    if not isinstance(rid, str) or not _RID.match(rid):
        raise InvalidRequestError(
            f"{field} must be 1-128 characters of letters, digits, '_', '-', '.', ':'; got {rid!r}"
        )
    return rid


def check_adapter_name(name: object, loaded: Collection[str] | None) -> str:
    """An adapter name a request may select (``loaded``: the names known loaded, or None to
    let the server judge)."""
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"lora_path must be a non-empty adapter name, got {name!r}")
    if loaded is not None and name not in loaded:
        known = ", ".join(sorted(loaded)) or "none"
        raise InvalidRequestError(
            f"lora_path: adapter {name!r} is not loaded (loaded: {known}); "
            "load it with load_lora_adapter() or ServerConfig(lora_paths=...)"
        )
    return name


def _check_ids(value: object) -> list[int]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not value:
        raise InvalidRequestError("input_ids must be a non-empty list of token ids")
    ids = []
    for token in value:
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise InvalidRequestError(f"input_ids must hold non-negative ints, got {token!r}")
        ids.append(token)
    return ids


def build_generate(
    text: str | Sequence[str] | None = None,
    *,
    input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
    sampling_params: SamplingParams | Mapping[str, Any] | None = None,
    return_logprob: bool = False,
    top_logprobs_num: int | None = None,
    logprob_start_len: int | None = None,
    lora_path: str | None = None,
    rid: str | Sequence[str] | None = None,
    stream: bool = False,
    loaded_adapters: Collection[str] | None = None,
) -> GenerateRequest:
    """Validate the arguments of ``generate`` and build the body (no I/O).

    Raises :class:`~sglang_backend.errors.InvalidRequestError` naming the field.
    """
    if (text is None) == (input_ids is None):
        raise InvalidRequestError("pass exactly one of text and input_ids")
    body: dict[str, Any] = {}
    if text is not None:
        if isinstance(text, str):
            body["text"], batched, size = text, False, 1
        elif isinstance(text, Sequence) and not isinstance(text, bytes):
            items = list(text)
            if not items:
                raise InvalidRequestError("text: an empty batch (give at least one string)")
            bad = [t for t in items if not isinstance(t, str)]
            if bad:
                raise InvalidRequestError(f"text: a batch holds strings only, got {bad[0]!r}")
            body["text"], batched, size = items, True, len(items)
        else:
            raise InvalidRequestError(f"text must be a str or a list of str, got {type(text).__name__}")
    else:
        if not isinstance(input_ids, Sequence) or isinstance(input_ids, (str, bytes)):
            raise InvalidRequestError("input_ids must be a list of ints or a list of lists")
        values = list(input_ids)
        if not values:
            raise InvalidRequestError("input_ids: an empty batch (give at least one token list)")
        if all(isinstance(v, Sequence) and not isinstance(v, (str, bytes)) for v in values):
            body["input_ids"], batched, size = [_check_ids(v) for v in values], True, len(values)
        else:
            body["input_ids"], batched, size = _check_ids(values), False, 1
    params = SamplingParams.of(sampling_params)
    body["sampling_params"] = params.wire()
    n = params.n or 1
    if not isinstance(return_logprob, bool):
        raise InvalidRequestError(f"return_logprob must be a bool, got {return_logprob!r}")
    if top_logprobs_num is not None:
        if isinstance(top_logprobs_num, bool) or not isinstance(top_logprobs_num, int) \
                or top_logprobs_num < 0:
            raise InvalidRequestError(
                f"top_logprobs_num must be a non-negative int, got {top_logprobs_num!r}")
        if not return_logprob:
            raise InvalidRequestError("top_logprobs_num needs return_logprob=True")
        body["top_logprobs_num"] = top_logprobs_num
    if logprob_start_len is not None:
        if isinstance(logprob_start_len, bool) or not isinstance(logprob_start_len, int) \
                or logprob_start_len < -1:
            raise InvalidRequestError(
                f"logprob_start_len must be an int >= -1, got {logprob_start_len!r}")
        if not return_logprob:
            raise InvalidRequestError("logprob_start_len needs return_logprob=True")
        body["logprob_start_len"] = logprob_start_len
    if return_logprob:
        body["return_logprob"] = True
    if lora_path is not None:
        body["lora_path"] = check_adapter_name(lora_path, loaded_adapters)
    if rid is None:
        rids = [new_rid() for _ in range(size)]
    elif isinstance(rid, str):
        if batched:
            raise InvalidRequestError("rid: a batch needs one rid per prompt (a list)")
        rids = [check_rid(rid)]
    else:
        rids = [check_rid(r) for r in rid]
        if len(rids) != size:
            raise InvalidRequestError(f"rid: {len(rids)} ids for a batch of {size} prompts")
    body["rid"] = rids if batched else rids[0]
    if stream:
        body["stream"] = True
    return GenerateRequest(body, rids, batched=batched, count=n, stream=stream)


def parse_generate(request: GenerateRequest, data: object) -> GenerateResult | list[GenerateResult]:
    """The typed answer of a non-streaming ``/generate``: one result, or a list for a batch or
    ``n > 1``."""
    try:
        if isinstance(data, list):
            results = [GenerateResult.model_validate(item) for item in data]
        else:
            results = [GenerateResult.model_validate(data)]
    except ValidationError as exc:
        raise RequestError(f"/generate answered an unexpected body: {str(data)[:200]}",
                           body=data) from exc
    if request.many:
        return results
    if len(results) != 1:
        raise RequestError(f"/generate answered {len(results)} outputs for one prompt", body=data)
    return results[0]


class LoRAUpdateResult(BaseModel):
    """The answer of ``/load_lora_adapter`` and ``/unload_lora_adapter`` (SGLang's
    ``LoRAUpdateOutput``): ``loaded_adapters`` maps each loaded name to its path (or SGLang's
    ``LoRARef`` object)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    success: bool
    error_message: str | None = None
    loaded_adapters: dict[str, Any] | None = None

    @property
    def adapters(self) -> dict[str, str]:
        """Loaded adapter names and their paths."""
        out: dict[str, str] = {}
        for name, ref in (self.loaded_adapters or {}).items():
            path = ref.get("lora_path") if isinstance(ref, Mapping) else ref
            out[name] = str(path)
        return out


class UpdateWeightsResult(BaseModel):
    """The answer of ``/update_weights_from_disk``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    success: bool
    message: str = ""
    num_paused_requests: int = 0


MEMORY_TAGS: frozenset[str] = frozenset({"kv_cache", "weights", "cuda_graph"})
"""What ``release_memory_occupation``/``resume_memory_occupation`` may name (SGLang's
``GPU_MEMORY_TYPE_*``); no tags means all."""


def check_memory_tags(tags: Sequence[str] | None) -> dict[str, Any]:
    """The body of a memory call: ``{"tags": [...]}`` or ``{}`` for all (validated)."""
    if tags is None:
        return {}
    if isinstance(tags, str) or not isinstance(tags, Sequence):
        raise InvalidRequestError(f"tags must be a list of {sorted(MEMORY_TAGS)}, got {tags!r}")
    bad = [t for t in tags if t not in MEMORY_TAGS]
    if bad or not tags:
        raise InvalidRequestError(
            f"tags: {bad[0]!r} is not one of {sorted(MEMORY_TAGS)}" if bad
            else "tags: give at least one tag, or None for all"
        )
    return {"tags": list(dict.fromkeys(tags))}


def check_native(response: Any) -> Any:
    """Like :func:`~sglang_backend._translate.check_response`, reading also the
    ``{"success": false, "error_message"|"message": ...}`` bodies of SGLang's admin routes."""
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping) and body.get("success") is False:
            message = body.get("error_message") or body.get("message")
            if message:
                raise status_error(response.status_code, {"error": str(message)})
    return check_response(response)


def stream_error(body: Mapping[str, Any]) -> Exception:
    """The typed error for a ``data: {"error": ...}`` event inside a 200 ``/generate`` stream."""
    error = body.get("error")
    code = error.get("code") if isinstance(error, Mapping) else None
    status = code if isinstance(code, int) and not isinstance(code, bool) else None
    text = f"the server reported an error mid-stream: {server_message(body) or error!r}"
    if status in (400, 422):
        return BadRequestError(text, status_code=status, body=body)
    return RequestError(text, status_code=status, body=body)
