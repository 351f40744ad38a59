"""Command line of the stand-in: SGLang's flags (unknown ones ignored) plus ``--standin-*``."""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

__all__ = ["StandinArgs", "build_parser", "parse_args", "parse_token_count"]

_SI = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_IEC = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def parse_token_count(text: str) -> int:
    """Parse token counts as SGLang does: ``32768``, SI ``32k``/``1.5M``, IEC ``32Ki``.

    Suffixes are case-sensitive and decimals are allowed with SI suffixes only.
    """
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", text.strip())
    if match is None or (match.group(2) is None and "." in match.group(1)):
        raise argparse.ArgumentTypeError(
            f"invalid token count: {text!r} (a plain integer, SI suffixes 1k 1M, or IEC 1Ki 1Mi;"
            " suffixes are case-sensitive)"
        )
    number, suffix = match.groups()
    if suffix in _IEC:
        if "." in number:
            raise argparse.ArgumentTypeError(f"decimals are not allowed with {suffix!r}: {text!r}")
        value = int(number) * _IEC[suffix]
    else:
        value = int(Decimal(number) * _SI[suffix]) if suffix else int(number)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"token count must be positive: {text!r}")
    return value


def _bool_flag(text: str) -> bool:
    """Parse an optional boolean value given to a flag."""
    return text.strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class StandinArgs:
    """Resolved server arguments (SGLang's names) and the stand-in's fault switches."""

    model_path: str
    tokenizer_path: str
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    served_model_name: str = ""
    context_length: int = 32768
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    tp_size: int = 1
    dp_size: int = 1
    pp_size: int = 1
    base_gpu_id: int = 0
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None
    mem_fraction_static: float | None = None
    chat_template: str | None = None
    skip_server_warmup: bool = False
    log_level: str = "info"
    log_level_http: str | None = None
    random_seed: int | None = None
    enable_metrics: bool = False
    stream_response_default_include_usage: bool = False
    enable_cache_report: bool = False
    allow_auto_truncate: bool = False
    device: str = "cpu"
    standin_load_seconds: float = 0.0
    standin_warmup_seconds: float = 0.0
    standin_fail_at_load: str | None = None
    standin_ignore_sigterm: bool = False
    standin_crash_after: int | None = None
    standin_token_delay: float = 0.0
    standin_events_file: str | None = None
    ignored_args: list[str] = field(default_factory=list)

    def server_args_dict(self) -> dict[str, Any]:
        """Return SGLang-style server args (the ``server_args=`` line and ``/server_info``)."""
        data = asdict(self)
        data.pop("ignored_args")
        for key in list(data):
            if key.startswith("standin_"):
                data.pop(key)
        data.update(
            {
                "load_format": "auto",
                "trust_remote_code": False,
                "dtype": "auto",
                "kv_cache_dtype": "auto",
                "quantization": None,
                "max_running_requests": None,
                "max_total_tokens": None,
                "chunked_prefill_size": 8192,
                "max_prefill_tokens": 16384,
                "schedule_policy": "fcfs",
                "tokenizer_worker_num": 1,
                "admin_api_key": None,
                "watchdog_timeout": 300,
                "is_embedding": False,
                "enable_lora": None,
                "weight_version": "default",
                "sampling_defaults": "model",
            }
        )
        return data


def build_parser() -> argparse.ArgumentParser:
    """Build the argparse parser (SGLang-compatible subset plus ``--standin-*``)."""
    parser = argparse.ArgumentParser(
        prog="python -m sglang_backend.testing",
        description="CPU stand-in for the SGLang server (for tests). Unknown flags are ignored.",
    )
    add = parser.add_argument
    add("--model-path", "--model", dest="model_path", required=True)
    add("--tokenizer-path", default=None)
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=30000)
    add("--api-key", default=None)
    add("--served-model-name", default=None)
    add("--context-length", type=parse_token_count, default=32768)
    add("--tool-call-parser", default=None)
    add("--reasoning-parser", default=None)
    add("--tp-size", "--tensor-parallel-size", "--tp", dest="tp_size", type=int, default=1)
    add("--dp-size", "--data-parallel-size", "--dp", dest="dp_size", type=int, default=1)
    add("--pp-size", "--pipeline-parallel-size", dest="pp_size", type=int, default=1)
    add("--base-gpu-id", type=int, default=0)
    add("--nnodes", type=int, default=1)
    add("--node-rank", type=int, default=0)
    add("--dist-init-addr", "--nccl-init-addr", dest="dist_init_addr", default=None)
    add("--mem-fraction-static", type=float, default=None)
    add("--chat-template", default=None)
    add("--skip-server-warmup", action="store_true")
    add(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
    )
    add("--log-level-http", default=None, type=str.lower)
    add("--random-seed", type=int, default=None)
    add("--enable-metrics", action="store_true")
    add("--stream-response-default-include-usage", action="store_true")
    add("--enable-cache-report", action="store_true")
    add("--allow-auto-truncate", action="store_true")
    add("--device", default="cpu")
    add("--standin-load-seconds", type=float, default=0.0, metavar="S")
    add("--standin-warmup-seconds", type=float, default=0.0, metavar="S")
    add("--standin-fail-at-load", default=None, metavar="MESSAGE")
    add(
        "--standin-ignore-sigterm",
        nargs="?",
        const=True,
        default=False,
        type=_bool_flag,
    )
    add("--standin-crash-after", type=int, default=None, metavar="N")
    add("--standin-token-delay", type=float, default=0.0, metavar="S")
    add("--standin-events-file", default=None, metavar="PATH")
    return parser


def parse_args(argv: list[str] | None = None) -> StandinArgs:
    """Parse *argv* like SGLang does; exits with code 2 on missing/invalid known flags."""
    namespace, unknown = build_parser().parse_known_args(argv)
    values = vars(namespace)
    model_path: str = values["model_path"]
    values["tokenizer_path"] = values["tokenizer_path"] or model_path
    values["served_model_name"] = values["served_model_name"] or model_path
    return StandinArgs(ignored_args=list(unknown), **values)
