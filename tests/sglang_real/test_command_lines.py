"""The command lines the library renders, parsed by SGLang's own parser.

Each ServerConfig of the matrix is rendered with ``ServerConfig.server_args`` (what the
library launches), parsed with SGLang 0.5.23's parser (``parse_server_args``: the parser of
``prepare_server_args``), and every ``ServerArgs`` field must be what the config meant, while
every other field keeps SGLang's default. The stand-in's parser must agree on the same argv.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Literal

import pytest

from sglang_backend import ServerConfig
from sglang_backend import config as config_module
from sglang_backend._topology import DecodeWorker, PDTopology, PrefillWorker
from sglang_backend.config import DEFAULT_LAUNCH_COMMAND
from sglang_backend.testing._cli import parse_args as standin_parse_args

from .conftest import parse_server_args, server_args_fields

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
TYPED = tuple(config_module._TYPED_FLAGS)

# (id, ServerConfig keywords, server_args keywords, extra ServerArgs fields expected)
MATRIX: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("defaults", {}, {}, {}),
    (
        "every-typed-option",
        {
            "tp_size": 2, "dp_size": 4, "base_gpu_id": 1, "mem_fraction_static": 0.72,
            "context_length": 32768, "served_model_name": "my-model", "chat_template": "chatml",
            "tool_call_parser": "qwen25", "reasoning_parser": "deepseek-r1",
        },
        {},
        {},
    ),
    ("api-key", {"api_key": "sk-secret-0123"}, {}, {}),
    ("api-key-leading-dash", {}, {"api_key": "-dash-first-key"}, {}),
    ("model-path-leading-dash", {}, {"model_path": "-odd/model"}, {}),
    ("local-path-with-space", {}, {"model_path": "/models/my model"}, {}),
    ("base-gpu-id-argument", {"tp_size": 2}, {"base_gpu_id": 3}, {}),
    ("base-gpu-id-argument-overrides-config", {"base_gpu_id": 1}, {"base_gpu_id": 5}, {}),
    (
        "multi-node",
        {"nnodes": 2, "node_rank": 1, "dist_init_addr": "10.0.0.1:5000", "tp_size": 16},
        {},
        {},
    ),
    ("host-and-port", {"host": "0.0.0.0"}, {"port": 8000}, {}),
    (
        "extra-args",
        {"extra_args": ("--log-level", "warning", "--enable-metrics")},
        {},
        {"log_level": "warning", "enable_metrics": True},
    ),
    (
        "extra-args-equals-form",
        {"extra_args": ("--log-level=error", "--random-seed=7", "--skip-server-warmup",
                        "--stream-response-default-include-usage", "--enable-cache-report")},
        {},
        {"log_level": "error", "random_seed": 7, "skip_server_warmup": True,
         "stream_response_default_include_usage": True, "enable_cache_report": True},
    ),
    ("keep-alive-on-traffic", {"keep_alive_on_traffic": True}, {}, {"enable_metrics": True}),
    (
        "keep-alive-on-traffic-enable-metrics-given",
        {"keep_alive_on_traffic": True, "extra_args": ("--enable-metrics",)},
        {},
        {"enable_metrics": True},
    ),
    (
        "warm-sleep-switches",
        {"sleep_timeout": 60, "inactivity_timeout": 600},
        {},
        {"enable_memory_saver": True, "enable_weights_cpu_backup": True},
    ),
    (
        "warm-sleep-switches-given-or-refused",
        {"sleep_timeout": 60, "enable_weights_cpu_backup": False,
         "extra_args": ("--enable-memory-saver",)},
        {},
        {"enable_memory_saver": True, "enable_weights_cpu_backup": False},
    ),
    ("memory-saver-without-sleep", {"enable_memory_saver": True}, {}, {"enable_memory_saver": True}),
    ("parsers-auto", {"tool_call_parser": "auto", "reasoning_parser": "auto"}, {}, {}),
    ("chat-template-file", {"chat_template": "/etc/templates/chat.jinja"}, {}, {}),
    ("tiny-mem-fraction", {"mem_fraction_static": 0.05, "context_length": 1}, {}, {}),
]  # fmt: skip


def render(options: dict[str, Any], call: dict[str, Any]) -> tuple[ServerConfig, list[str], dict[str, Any]]:
    """The ServerConfig, the argv the library renders, and what every field should be."""
    config = ServerConfig(**options)
    model_path = call.get("model_path", MODEL)
    port = call.get("port", 31234)
    api_key = call.get("api_key", config.api_key.get_secret_value() if config.api_key else None)
    base_gpu_id = call.get("base_gpu_id")
    argv = config.server_args(model_path, port=port, api_key=api_key, base_gpu_id=base_gpu_id)
    meant: dict[str, Any] = {"model_path": model_path, "host": config.host, "port": port,
                             "api_key": api_key}  # fmt: skip
    for field in TYPED:
        value = getattr(config, field)
        if field == "base_gpu_id" and base_gpu_id is not None:
            value = base_gpu_id
        if value is not None:
            meant[field] = value
    return config, argv, meant


def judge_argv(argv: list[str], meant: dict[str, Any]) -> dict[str, Any]:
    """Parse *argv* with SGLang and compare with *meant*; every other field at its default."""
    parsed = server_args_fields(parse_server_args(argv))
    baseline = server_args_fields(parse_server_args(["--model-path", "baseline"]))
    problems = []
    for field, value in meant.items():
        if field not in parsed:
            problems.append(f"{field}: not a ServerArgs field")
        elif parsed[field] != value:
            problems.append(f"{field}: SGLang got {parsed[field]!r}, meant {value!r}")
    for field, value in parsed.items():
        if field not in meant and field != "model_path" and value != baseline.get(field):
            problems.append(f"{field}: unexpectedly set to {value!r}")
    assert not problems, f"argv {argv!r}:\n  " + "\n  ".join(problems)
    return parsed


@pytest.mark.parametrize(("options", "call", "extra"), [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_sglang_parses_what_the_config_means(
    options: dict[str, Any], call: dict[str, Any], extra: dict[str, Any]
) -> None:
    _config, argv, meant = render(options, call)
    judge_argv(argv, {**meant, **extra})


@pytest.mark.parametrize(("options", "call", "extra"), [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_standin_parses_like_sglang(
    options: dict[str, Any], call: dict[str, Any], extra: dict[str, Any]
) -> None:
    """The stand-in's own CLI reads the same argv into the same values (fields it knows)."""
    _config, argv, meant = render(options, call)
    real = server_args_fields(parse_server_args(argv))
    standin = dataclasses.asdict(standin_parse_args(argv))
    for field in {**meant, **extra}:
        if field in standin:
            assert standin[field] == real[field], (
                f"{field}: stand-in {standin[field]!r}, SGLang {real[field]!r}"
            )
    assert standin["ignored_args"] == [], "the stand-in ignored flags SGLang understands"


def test_full_command_is_launch_server_plus_args() -> None:
    config = ServerConfig(tp_size=2, tool_call_parser="qwen")
    command = config.command(MODEL, port=30123, api_key="k")
    assert command[:3] == list(DEFAULT_LAUNCH_COMMAND) == [sys.executable, "-m", "sglang.launch_server"]
    # sglang/launch_server.py hands sys.argv[1:] after "-m sglang.launch_server" to the parser.
    judge_argv(command[3:], {"model_path": MODEL, "host": "127.0.0.1", "port": 30123, "api_key": "k",
                             "tp_size": 2, "tool_call_parser": "qwen"})  # fmt: skip


def test_typed_flags_cover_every_sglang_alias() -> None:
    """extra_args may not repeat a typed/managed option under any SGLang spelling."""
    from .conftest import sglang_parser

    parser = sglang_parser()
    managed = {"model_path", "host", "port", "api_key"}
    for action in parser._actions:
        if action.dest in config_module._TYPED_FLAGS:
            assert set(action.option_strings) <= set(config_module._TYPED_FLAGS[action.dest]), action.dest
            assert config_module._TYPED_FLAGS[action.dest][0] in action.option_strings
        if action.dest in managed:
            assert set(action.option_strings) <= set(config_module._MANAGED_FLAGS), action.dest
    for field, flags in config_module._TYPED_FLAGS.items():
        for flag in flags:
            with pytest.raises(Exception, match="extra_args may not contain"):
                ServerConfig(extra_args=(flag, "1"))
            assert field


# ------------------------------------------------------------------ the judge is not lenient


def test_a_wrong_flag_name_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(config_module._TYPED_FLAGS, "tp_size", ("--tp-sise",))
    _config, argv, meant = render({"tp_size": 2}, {})
    with pytest.raises(AssertionError, match="unrecognized arguments: --tp-sise"):
        judge_argv(argv, meant)


def test_a_flag_for_the_wrong_field_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(config_module._TYPED_FLAGS, "dp_size", ("--pp-size",))
    _config, argv, meant = render({"dp_size": 2}, {})
    with pytest.raises(AssertionError, match="dp_size: SGLang got 1, meant 2"):
        judge_argv(argv, meant)


def test_a_wrong_value_fails() -> None:
    with pytest.raises(AssertionError, match="invalid int value"):
        judge_argv(["--model-path", MODEL, "--tp-size", "two"], {})
    with pytest.raises(AssertionError, match="invalid choice"):
        judge_argv(["--model-path", MODEL, "--tool-call-parser", "no-such-parser"], {})
    with pytest.raises(AssertionError, match="port: SGLang got 1, meant 2"):
        judge_argv(["--model-path", MODEL, "--port", "1"], {"port": 2})


ABBREVIATIONS = {"--tp": "2", "--tp-s": "2", "--dp": "2", "--mem-frac": "0.5", "--api-k": "k",
                 "--ho": "0.0.0.0", "--po": "1", "--served-model": "x", "--tool-call": "qwen",
                 "--context-len": "8", "--nccl-init-addr": "h:1", "--base-gpu": "1"}  # fmt: skip


@pytest.mark.parametrize(("flag", "value"), ABBREVIATIONS.items(), ids=list(ABBREVIATIONS))
def test_extra_args_cannot_override_through_an_abbreviation(flag: str, value: str) -> None:
    """SGLang's argparse takes unambiguous prefixes: an abbreviation would silently win."""
    parse_server_args(["--model-path", MODEL, flag, value])  # SGLang does accept it ...
    with pytest.raises(Exception, match="extra_args may not contain"):
        ServerConfig(extra_args=(flag, value))  # ... so the library must refuse it


SPELLINGS = ["4096", "32k", "32Ki", "1M", "1Mi", "25.6k", "2G", "1T", "4K", "1m", "1.5Ki", "32 k", "abc"]


@pytest.mark.parametrize("text", SPELLINGS)
def test_standin_reads_context_length_like_sglang(text: str) -> None:
    try:
        real: int | None = server_args_fields(
            parse_server_args(["--model-path", MODEL, "--context-length", text])
        )["context_length"]
    except AssertionError:
        real = None
    try:
        argv = ["--model-path", MODEL, "--context-length", text]
        standin: int | None = standin_parse_args(argv).context_length
    except SystemExit:
        standin = None
    assert standin == real


# -- disaggregated prefill/decode (rendered here, GPU-only to run) --------------------------------
PD = PDTopology(
    prefill=[PrefillWorker(url="http://10.0.0.1:30000", bootstrap_port=8998),
             PrefillWorker(url="http://10.0.0.2:30000")],
    decode=[DecodeWorker(url="http://10.0.0.3:30001")],
    transfer_backend="nixl", ib_device="mlx5_0",
)


@pytest.mark.parametrize(("role", "index", "fields"), [
    ("prefill", 0, {"disaggregation_mode": "prefill", "disaggregation_bootstrap_port": 8998}),
    ("prefill", 1, {"disaggregation_mode": "prefill"}),
    ("decode", 0, {"disaggregation_mode": "decode"}),
])  # fmt: skip
def test_sglang_parses_the_pd_worker_flags(
    role: Literal["prefill", "decode"], index: int, fields: dict[str, Any]
) -> None:
    config = ServerConfig(extra_args=tuple(PD.sglang_args(role, index)))
    argv = config.server_args(MODEL, port=30000, api_key=None)
    judge_argv(argv, {"model_path": MODEL, "host": config.host, "port": 30000, "api_key": None,
                      "disaggregation_transfer_backend": "nixl",
                      "disaggregation_ib_device": "mlx5_0", **fields})
