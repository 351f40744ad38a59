"""Why a server failed to start: one table of the real texts, and the checks made before launch.

:data:`PATTERNS` is the single table of the wordings SGLang, torch, transformers,
huggingface_hub and CPython print for the start failures users hit most, each with the
error class it proves, a hint, where the wording comes from, and one real sample line
(the stand-in's ``--standin-fail-with KIND`` prints that sample, so tests use the real
text). :func:`classify` maps an exited server's output to the first matching entry.

:func:`check_before_launch` runs the checks that need no server: SGLang importable by the
launching Python, parser names known to that SGLang, and the model download (see
:mod:`sglang_backend._download`). This module imports nothing heavy at import time: the
stand-in reads :data:`PATTERNS` too.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .errors import (
    GPUUnavailableError,
    ModelAccessError,
    ModelNotFoundError,
    PortInUseError,
    ServerOutOfMemoryError,
    ServerStartError,
    SGLangNotInstalledError,
    UnknownParserError,
)

if TYPE_CHECKING:
    from .config import ServerConfig

__all__ = [
    "PATTERNS",
    "Diagnosis",
    "Pattern",
    "check_before_launch",
    "classify",
    "is_sglang_command",
    "pattern",
]

Where = Literal["scheduler", "main", "argparse"]
"""Where SGLang prints the text: a scheduler subprocess's traceback (the launcher is then
killed by SIGQUIT → SIGKILL), the launcher's own traceback (exit 1), or argparse (exit 2)."""


@dataclass(frozen=True)
class Pattern:
    """One recognised start failure."""

    kind: str  # the stand-in's --standin-fail-with name
    error: type[ServerStartError]
    regex: re.Pattern[str]
    source: str  # file (or issue) the wording comes from
    sample: str  # one real line, as printed
    where: Where
    hint: str | None = None  # None: the error class's default hint


def _p(
    kind: str,
    error: type[ServerStartError],
    regex: str,
    source: str,
    sample: str,
    where: Where,
    hint: str | None = None,
) -> Pattern:
    return Pattern(kind, error, re.compile(regex), source, sample, where, hint)


# Order matters: the first entry matching any line wins (gated before not-found: the
# Hub's not-found text mentions gated repositories too).
PATTERNS: tuple[Pattern, ...] = (
    _p(
        "not-installed", SGLangNotInstalledError,
        r"No module named '?sglang(\.launch_server)?'?\s*\)?$",
        "CPython Lib/runpy.py _get_module_details ('Error while finding module specification')",
        "/usr/bin/python3: Error while finding module specification for 'sglang.launch_server' "
        "(ModuleNotFoundError: No module named 'sglang')",
        "main",
    ),
    _p(
        "oom", ServerOutOfMemoryError,
        r"CUDA out of memory|OutOfMemoryError: CUDA|CUDA error: out of memory",
        "torch c10/cuda/CUDACachingAllocator.cpp (torch.OutOfMemoryError)",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
        "total capacity of 79.19 GiB of which 1.06 GiB is free. Including non-PyTorch memory, "
        "this process has 78.12 GiB memory in use.",
        "scheduler",
    ),
    _p(
        "kv-cache-oom", ServerOutOfMemoryError,
        r"Not enough memory\. Please try to increase --mem-fraction-static",
        "SGLang python/sglang/srt/model_executor/model_runner.py (memory pool init)",
        "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.",
        "scheduler",
        "The weights left no room for the KV cache: raise mem_fraction_static, lower "
        "context_length, or raise tp_size.",
    ),
    _p(
        "gated", ModelAccessError,
        r"Cannot access gated repo for url|You are trying to access a gated repo"
        r"|Access to model \S+ is restricted",
        "huggingface_hub utils/_http.py hf_raise_for_status (GatedRepoError); "
        "transformers utils/hub.py cached_files",
        "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-6745) "
        "Cannot access gated repo for url "
        "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json.",
        "main",
    ),
    _p(
        "unauthorized", ModelAccessError,
        r"Invalid credentials in Authorization header|40[13] Client Error: (Unauthorized|Forbidden)",
        "huggingface_hub utils/_http.py (invalid token); requests HTTPError text",
        "huggingface_hub.errors.HfHubHTTPError: 401 Client Error: Unauthorized for url: "
        "https://huggingface.co/api/models/org/model (Invalid credentials in Authorization header)",
        "main",
    ),
    _p(
        "model-not-found", ModelNotFoundError,
        r"Repository Not Found for url"
        r"|is not a local folder and is not a valid model identifier"
        r"|Revision Not Found for url",
        "huggingface_hub utils/_http.py (RepositoryNotFoundError); "
        "transformers utils/hub.py cached_files (OSError)",
        "OSError: no-such-org/no-such-model is not a local folder and is not a valid model "
        "identifier listed on 'https://huggingface.co/models'",
        "main",
    ),
    _p(
        "no-gpu", GPUUnavailableError,
        r"Found no NVIDIA driver on your system|No CUDA GPUs are available"
        r"|Torch not compiled with CUDA enabled",
        "torch aten/src/ATen/cuda/detail/CUDAHooks.cpp, c10/cuda/CUDAFunctions.cpp, "
        "torch/cuda/__init__.py _lazy_init",
        "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an "
        "NVIDIA GPU and installed a driver from http://www.nvidia.com/Download/index.aspx",
        "scheduler",
    ),
    _p(
        "driver-mismatch", GPUUnavailableError,
        r"The NVIDIA driver on your system is too old"
        r"|CUDA driver version is insufficient for CUDA runtime version"
        r"|unsupported display driver / cuda driver combination",
        "torch aten/src/ATen/cuda/detail/CUDAHooks.cpp; CUDA runtime cudaErrorInsufficientDriver"
        " / cudaErrorSystemDriverMismatch (error 803)",
        "RuntimeError: The NVIDIA driver on your system is too old (found version 11040). "
        "Please update your GPU driver by downloading and installing a new version from the "
        "URL: http://www.nvidia.com/Download/index.aspx Alternatively, go to: "
        "https://pytorch.org to install a PyTorch version that has been compiled with your "
        "version of the CUDA driver.",
        "scheduler",
        "The driver is older than torch's CUDA build: update the NVIDIA driver or install "
        "a torch built for it.",
    ),
    _p(
        "unknown-parser", UnknownParserError,
        r"argument --(tool-call|reasoning)-parser: invalid choice",
        "SGLang python/sglang/srt/server_args.py add_cli_args (argparse choices=)",
        "launch_server.py: error: argument --tool-call-parser: invalid choice: 'nope' "
        "(choose from 'deepseekv3', 'glm', 'gpt-oss', 'kimi_k2', 'llama3', 'mistral', "
        "'pythonic', 'qwen', 'qwen25', 'step3')",
        "argparse",
    ),
    _p(
        "port-in-use", PortInUseError,
        r"error while attempting to bind on address .*address already in use",
        "uvicorn server.py startup (OSError EADDRINUSE)",
        "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 30000): "
        "address already in use",
        "main",
    ),
)


def pattern(kind: str) -> Pattern:
    """The table entry for a stand-in ``--standin-fail-with`` kind."""
    for entry in PATTERNS:
        if entry.kind == kind:
            return entry
    raise KeyError(kind)


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`classify` found."""

    error: type[ServerStartError]
    evidence: str
    hint: str | None
    source: str


def classify(lines: Iterable[str]) -> Diagnosis | None:
    """The first table entry matching a line of an exited server's output (pure)."""
    lines = list(lines)
    for entry in PATTERNS:
        for line in reversed(lines):  # the last occurrence is the closest to the exit
            if entry.regex.search(line):
                return Diagnosis(entry.error, line.strip(), entry.hint, entry.source)
    return None


def start_error(
    summary: str,
    *,
    output: Sequence[str],
    returncode: int | None,
    command: Sequence[str],
    log_tail: Sequence[str],
) -> ServerStartError:
    """The most specific start error ``output`` proves (plain ServerStartError otherwise)."""
    found = classify(output)
    if found is None or found.error is PortInUseError:
        # PortInUseError's constructor wants host/port; the supervisor raises it itself.
        return ServerStartError(summary, returncode=returncode, command=command, log_tail=log_tail)
    return found.error(
        summary, returncode=returncode, command=command, log_tail=log_tail,
        evidence=found.evidence, hint=found.hint,
    )


# ---------------------------------------------------------------------------- before launch


def is_sglang_command(command: Sequence[str]) -> bool:
    """Whether ``command`` runs real SGLang (``-m sglang.launch_server`` or ``sglang serve``)."""
    return "sglang.launch_server" in command or os.path.basename(command[0]) == "sglang"


def _own_python(command: Sequence[str]) -> bool:
    """The command runs this interpreter (so find_spec answers for it)."""
    try:
        return os.path.samefile(command[0], sys.executable)
    except OSError:
        return False


def _sglang_importable_here(config: ServerConfig) -> bool:
    """This interpreter launches real SGLang and can import it (blocking)."""
    command = config.resolved_launch_command
    if not is_sglang_command(command):
        return False
    if config.launch_command is not None and not _own_python(command):
        return False
    return importlib.util.find_spec("sglang") is not None


@functools.cache
def _parser_names() -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """SGLang's tool-call and reasoning parser names (None where they cannot be read).

    The lists SGLang 0.5.23's ``server_args.py`` gives argparse as ``choices``:
    ``FunctionCallParser.ToolCallParserEnum`` and ``ReasoningParser.DetectorMap``. Blocking
    (imports SGLang modules, which import torch): run in a thread; cached per process.
    """
    tool: frozenset[str] | None = None
    reasoning: frozenset[str] | None = None
    try:
        module = importlib.import_module("sglang.srt.function_call.function_call_parser")
        tool = frozenset(module.FunctionCallParser.ToolCallParserEnum)
    except Exception:  # noqa: BLE001 - any import or layout problem: argparse still checks
        tool = None
    try:
        module = importlib.import_module("sglang.srt.parser.reasoning_parser")
        reasoning = frozenset(module.ReasoningParser.DetectorMap)
    except Exception:  # noqa: BLE001 - as above
        reasoning = None
    return tool, reasoning


def _check_parsers(
    config: ServerConfig, tool: frozenset[str] | None, reasoning: frozenset[str] | None
) -> None:
    for flag, value, known in (
        ("--tool-call-parser", config.tool_call_parser, tool),
        ("--reasoning-parser", config.reasoning_parser, reasoning),
    ):
        if value is not None and known is not None and value not in known:
            choices = ", ".join(sorted(known))
            raise UnknownParserError(
                f"SGLang has no {flag.lstrip('-').replace('-', ' ')} named {value!r}",
                evidence=f"argument {flag}: invalid choice: {value!r} (choose from {choices})",
            )


def _sglang_missing(config: ServerConfig) -> bool:
    """The default-style command runs this interpreter and it has no ``sglang`` (blocking)."""
    command = config.resolved_launch_command
    if "sglang.launch_server" not in command:
        return False
    if config.launch_command is not None and not _own_python(command):
        return False  # another interpreter: its exit text is classified instead
    return importlib.util.find_spec("sglang") is None


async def check_before_launch(
    model_path: str,
    config: ServerConfig,
    *,
    emit: Callable[..., Any] | None = None,
    download: bool | None = None,
) -> dict[str, str]:
    """Fail fast on what needs no server; download a Hub model. Returns env additions.

    * the default launch command and no ``sglang`` in this interpreter →
      :class:`~sglang_backend.errors.SGLangNotInstalledError`;
    * SGLang importable here and ``tool_call_parser``/``reasoning_parser`` not among its
      names → :class:`~sglang_backend.errors.UnknownParserError`;
    * ``download`` (None: when ``command`` runs real SGLang) and ``model_path`` a Hub id →
      download before launch (``download`` events through ``emit(kind, **detail)``),
      bounded by ``download_timeout``; returns ``{"HF_HUB_OFFLINE": "1"}`` once complete.
    """
    command = config.resolved_launch_command
    if await asyncio.to_thread(_sglang_missing, config):
        raise SGLangNotInstalledError(
            f"SGLang is not installed in {command[0]}",
            evidence=f"{command[0]}: No module named 'sglang'",
        )
    if (config.tool_call_parser is not None or config.reasoning_parser is not None) and (
        await asyncio.to_thread(_sglang_importable_here, config)
    ):
        _check_parsers(config, *await asyncio.to_thread(_parser_names))
    if download is None:
        download = is_sglang_command(command)
    if not download:
        return {}
    from ._download import prepare_model  # huggingface_hub is optional and heavy

    return await prepare_model(model_path, config, emit=emit)
