"""Command line of the stand-in: SGLang's flags (unknown ones ignored) plus ``--standin-*``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from sglang_backend.testing._config import ConfigError, config_flag_names, merge_config
from sglang_backend.testing._tool_formats import PARSER_NAMES

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


class LoRAPathAction(argparse.Action):
    """``--lora-paths`` entries: ``PATH``, ``NAME=PATH`` or JSON ``{"lora_name", "lora_path", "pinned"}``.

    Named like SGLang's action on purpose: ``--config`` refuses a key whose action is
    neither store_true nor single-valued, and reports the action's class name.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        refs: list[dict[str, Any]] = []
        for item in values or []:
            text = str(item).strip()
            if text.startswith("{"):
                try:
                    obj = json.loads(text)
                except ValueError:
                    parser.error(f"invalid JSON in --lora-paths: {text!r}")
                if not isinstance(obj, dict) or "lora_name" not in obj or "lora_path" not in obj:
                    parser.error(f"--lora-paths JSON needs lora_name and lora_path: {text!r}")
                refs.append(
                    {
                        "lora_name": str(obj["lora_name"]),
                        "lora_path": str(obj["lora_path"]),
                        "pinned": bool(obj.get("pinned", False)),
                    }
                )
            elif "=" in text:
                name, path = text.split("=", 1)
                refs.append({"lora_name": name, "lora_path": path, "pinned": False})
            else:
                refs.append({"lora_name": text, "lora_path": text, "pinned": False})
        setattr(namespace, self.dest, refs)


@dataclass
class StandinArgs:
    """Resolved server arguments (SGLang's names) and the stand-in's fault switches."""

    model_path: str
    tokenizer_path: str
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = field(default=None, repr=False)  # secrets stay out of reprs
    admin_api_key: str | None = field(default=None, repr=False)
    is_embedding: bool = False
    enable_lora: bool | None = None
    lora_paths: list[dict[str, Any]] | None = None
    max_loras_per_batch: int = 8
    max_lora_rank: int | None = None
    lora_target_modules: list[str] | None = None
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
    # Accepted as SGLang accepts them; the stand-in holds no GPU memory to save or back up.
    enable_memory_saver: bool = False
    enable_weights_cpu_backup: bool = False
    stream_response_default_include_usage: bool = False
    enable_cache_report: bool = False
    enable_response_store: bool = False
    allow_auto_truncate: bool = False
    device: str = "cpu"
    standin_load_seconds: float = 0.0
    standin_warmup_seconds: float = 0.0
    standin_fail_at_load: str | None = None
    standin_fail_with: str | None = None
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
                "watchdog_timeout": 300,
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
    add("--config", default=None, metavar="FILE.yaml", help="YAML file of flags (CLI flags win)")
    add("--api-key", default=None)
    add("--admin-api-key", default=None)
    add("--is-embedding", action="store_true")
    add("--enable-lora", action="store_true", default=None)
    add("--lora-paths", action=LoRAPathAction, nargs="*", default=None)
    add("--max-loras-per-batch", type=int, default=8)
    add("--max-lora-rank", type=int, default=None)
    add("--lora-target-modules", nargs="*", default=None)
    add("--served-model-name", default=None)
    add("--context-length", type=parse_token_count, default=32768)
    add("--tool-call-parser", default=None, choices=["auto", *PARSER_NAMES])  # SGLang's argparse choices
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
    add("--enable-memory-saver", action="store_true")
    add("--enable-weights-cpu-backup", action="store_true")
    add("--stream-response-default-include-usage", action="store_true")
    add("--enable-cache-report", action="store_true")
    add("--enable-response-store", action="store_true")
    add("--allow-auto-truncate", action="store_true")
    add("--device", default="cpu")
    add("--standin-load-seconds", type=float, default=0.0, metavar="S")
    add("--standin-warmup-seconds", type=float, default=0.0, metavar="S")
    add("--standin-fail-at-load", default=None, metavar="MESSAGE")
    # Print the real wording of a classified start failure (sglang_backend._diagnose.PATTERNS)
    # where SGLang prints it, and exit the way SGLang then exits.
    add("--standin-fail-with", default=None, metavar="KIND")
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
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        merged, from_file = merge_config(parser, given)
    except (ConfigError, OSError) as exc:
        # SGLang lets the ValueError escape prepare_server_args: a traceback and exit 1.
        sys.stderr.write(f"Traceback (most recent call last):\n{type(exc).__name__}: {exc}\n")
        raise SystemExit(1) from None
    except Exception as exc:  # noqa: BLE001 - yaml.YAMLError and friends, as SGLang: exit 1
        sys.stderr.write(f"Failed to read config file: {type(exc).__name__}: {exc}\n")
        raise SystemExit(1) from None
    namespace, unknown = parser.parse_known_args(merged)
    refused = config_flag_names(parser, unknown, from_file)
    if refused:
        parser.error(f"unrecognized arguments: {' '.join(refused)}")
    values = vars(namespace)
    values.pop("config")
    if values["lora_paths"] and not values["enable_lora"]:
        values["enable_lora"] = True  # SGLang: --lora-paths implies --enable-lora
    model_path: str = values["model_path"]
    values["tokenizer_path"] = values["tokenizer_path"] or model_path
    values["served_model_name"] = values["served_model_name"] or model_path
    return StandinArgs(ignored_args=list(unknown), **values)
