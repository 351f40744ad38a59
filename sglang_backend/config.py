"""Configuration: how to launch a server (:class:`ServerConfig`) and how to sample (:class:`SGLangConfig`).

Both are pydantic models, validated at construction. A bad value raises
:class:`~sglang_backend.errors.ConfigError` naming the field, so mistakes surface before any
process is started or request sent.

Over 500 lines because ServerConfig's fields carry their documentation (the reference page is
rendered from their descriptions) and its flag rendering sits next to the fields it renders.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ._topology import PDTopology, normalize_worker_url
from ._validation import validation_problems
from .errors import ConfigError

__all__ = ["DEFAULT_LAUNCH_COMMAND", "RouterKind", "RouterPolicy", "SGLangConfig", "ServerConfig"]

DEFAULT_LAUNCH_COMMAND: tuple[str, ...] = (sys.executable, "-m", "sglang.launch_server")
"""``python -m sglang.launch_server`` with the running interpreter (works in every SGLang 0.5.x)."""

RouterPolicy = Literal["cache_aware", "round_robin", "random", "power_of_two"]
RouterKind = Literal["smg", "sglang-router"]

# Flags the library renders itself from ServerConfig / the model: extra_args may not repeat them,
# so nothing can silently override the bind address, port or API key.
_MANAGED_FLAGS: dict[str, str] = {
    "--model-path": "the model name (model_type)",
    "--model": "the model name (model_type)",
    "--host": "ServerConfig.host",
    "--port": "ServerConfig.port",
    "--api-key": "ServerConfig.api_key (or the model's api_key)",
    "--admin-api-key": "ServerConfig.admin_api_key",
    # The library passes the key in a private --config file; a second file would be ignored.
    "--config": "ServerConfig fields and extra_args (the library writes its own --config file)",
}

# Typed options: ServerConfig field -> SGLang flag (and aliases that mean the same).
_TYPED_FLAGS: dict[str, tuple[str, ...]] = {
    "tp_size": ("--tp-size", "--tensor-parallel-size"),
    "dp_size": ("--dp-size", "--data-parallel-size"),
    "base_gpu_id": ("--base-gpu-id",),
    "nnodes": ("--nnodes",),
    "node_rank": ("--node-rank",),
    "dist_init_addr": ("--dist-init-addr", "--nccl-init-addr"),
    "mem_fraction_static": ("--mem-fraction-static",),
    "context_length": ("--context-length",),
    "served_model_name": ("--served-model-name",),
    "chat_template": ("--chat-template",),
    "tool_call_parser": ("--tool-call-parser",),
    "reasoning_parser": ("--reasoning-parser",),
    "max_loras_per_batch": ("--max-loras-per-batch",),
    "max_lora_rank": ("--max-lora-rank",),
}

# Typed options rendered by hand (a store_true flag, nargs lists): extra_args may not repeat them.
_LORA_FLAGS: dict[str, tuple[str, ...]] = {
    "enable_lora": ("--enable-lora",),
    "lora_paths": ("--lora-paths",),
    "lora_target_modules": ("--lora-target-modules",),
}
_ADAPTER_NAME_CHARS = frozenset("=:/ ")
_METRICS_FLAG = "--enable-metrics"
# SGLang's switches the warm sleep needs: without the memory saver, /release_memory_occupation
# frees nothing; without the host copy, resumed weights are garbage (SGLang expects an RL
# trainer to push new ones). None in the config: on exactly when the warm sleep can happen.
_WARM_SLEEP_SWITCHES: dict[str, str] = {
    "enable_memory_saver": "--enable-memory-saver",
    "enable_weights_cpu_backup": "--enable-weights-cpu-backup",
}


def _config_error(exc: ValidationError, what: str, allowed: list[str] | None = None) -> ConfigError:
    problems = validation_problems(exc, unknown="unknown key", allowed_label="allowed keys",
                                   allowed=allowed or ())
    return ConfigError(f"invalid {what}: " + "; ".join(problems))


def _flag(flag: str, value: str) -> list[str]:
    # argparse would read a value starting with "-" as the next flag: glue it on with "=".
    return [f"{flag}={value}"] if value.startswith("-") else [flag, value]


def _flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def _spells(flag: str, name: str) -> bool:
    # SGLang's argparse accepts any unambiguous prefix (--tp, --api-k): those spell *name* too.
    return flag == name or (flag.startswith("--") and len(flag) > 2 and name.startswith(flag))


class ServerConfig(BaseModel):
    """How to launch and supervise an SGLang server. Immutable; validated at construction.

    Typed SGLang options (``tp_size``, ``tool_call_parser``, …) become command-line flags;
    ``None`` leaves SGLang's own default. Anything else goes in ``extra_args``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    launch_command: tuple[str, ...] | None = Field(
        default=None,
        description="argv prefix that starts the server; None = python -m sglang.launch_server.",
    )
    host: str = Field(default="127.0.0.1", min_length=1, description="Bind address (loopback).")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="HTTP port; None picks a free one."
    )
    extra_args: tuple[str, ...] = Field(default=(), description="More SGLang flags, verbatim.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables added for the server process."
    )
    startup_timeout: float = Field(
        default=1800.0,
        gt=0,
        le=86400,
        description="Seconds for launch + load + warm-up; real loads take minutes.",
    )
    download_timeout: float = Field(
        default=7200.0,
        gt=0,
        le=7 * 86400,
        description="Seconds for downloading a Hub model before launch (real SGLang with"
        " huggingface_hub installed); apart from startup_timeout.",
    )
    inactivity_timeout: float | None = Field(
        default=600.0,
        gt=0,
        description="Idle seconds before the server is stopped (relaunched on the next request);"
        " None never stops it.",
    )
    sleep_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Idle seconds before the warm sleep: the server's GPU memory is released"
        " (/release_memory_occupation) but the process kept (state SLEEPING); the next request"
        " resumes it first. Must be below inactivity_timeout, which still stops it later."
        " None: no sleep.",
    )
    enable_memory_saver: bool | None = Field(
        default=None,
        description="SGLang's --enable-memory-saver, which lets /release_memory_occupation free"
        " GPU memory. None: on when sleep_timeout is set.",
    )
    enable_weights_cpu_backup: bool | None = Field(
        default=None,
        description="SGLang's --enable-weights-cpu-backup: a host copy of the weights, so a"
        " server woken from the warm sleep serves the same weights (without it SGLang expects"
        " new weights to be pushed after the resume). None: on when sleep_timeout is set.",
    )
    keep_alive_on_traffic: bool = Field(
        default=False,
        description="Count requests that reach the server without the library (other clients"
        " of its URL) as activity, so the idle timers do not stop a server others are using:"
        " the watchdog reads SGLang's /metrics request counters, and --enable-metrics is added"
        " to the command line for them.",
    )
    shutdown_timeout: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="Grace after SIGTERM before every remaining process of the tree is SIGKILLed.",
    )
    restart_backoff: float = Field(
        default=2.0,
        ge=0,
        description="After a failed start, requests fail fast with the last start error for"
        " this many seconds instead of relaunching; doubled after each further failure, up to"
        " restart_backoff_max. start() always tries at once. 0 disables.",
    )
    restart_backoff_max: float = Field(
        default=120.0,
        ge=0,
        description="Ceiling of the crash-loop backoff window, in seconds.",
    )
    health_check_timeout: float = Field(
        default=5.0,
        gt=0,
        description="When a request times out, how long /health may take before the server is"
        " declared hung (ServerHungError; its tree is killed and relaunched on the next"
        " request). SGLang's /health runs a 1-token generation, so it takes about 1 s.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Key passed with --api-key; None generates a random one at launch.",
    )
    tp_size: int | None = Field(default=None, ge=1, description="Tensor-parallel GPUs.")
    dp_size: int | None = Field(default=None, ge=1, description="Data-parallel replicas.")
    base_gpu_id: int | None = Field(default=None, ge=0, description="First GPU index.")
    nnodes: int | None = Field(default=None, ge=1, description="Nodes (multi-node).")
    node_rank: int | None = Field(default=None, ge=0, description="This node's rank.")
    dist_init_addr: str | None = Field(
        default=None, description="host:port of node 0 (multi-node)."
    )
    mem_fraction_static: float | None = Field(
        default=None, gt=0, le=1, description="GPU memory fraction for weights + KV cache."
    )
    context_length: int | None = Field(default=None, ge=1, description="Max context tokens.")
    served_model_name: str | None = Field(
        default=None, min_length=1, description="Name in /v1/models (no ':')."
    )
    chat_template: str | None = Field(default=None, min_length=1)
    tool_call_parser: str | None = Field(
        default=None, min_length=1, description="Required for tool calls (e.g. qwen, llama3)."
    )
    reasoning_parser: str | None = Field(default=None, min_length=1)
    enable_lora: bool | None = Field(
        default=None,
        description="Serve LoRA adapters (--enable-lora); implied by lora_paths. Needed to load"
        " adapters at run time (load_lora_adapter).",
    )
    lora_paths: dict[str, str] = Field(
        default_factory=dict,
        description="Adapters loaded at launch, name -> path (--lora-paths NAME=PATH ...).",
    )
    max_loras_per_batch: int | None = Field(
        default=None, ge=1, description="Adapters one batch may mix (--max-loras-per-batch)."
    )
    max_lora_rank: int | None = Field(
        default=None, ge=1, description="Largest adapter rank to reserve for (--max-lora-rank)."
    )
    lora_target_modules: tuple[str, ...] = Field(
        default=(),
        description="Modules adapters may target (--lora-target-modules), e.g. q_proj v_proj.",
    )
    admin_api_key: SecretStr | None = Field(
        default=None,
        description="Key of SGLang's admin endpoints (--admin-api-key; abort, LoRA, weights,"
        " memory, cache, pause); passed in the private --config file, never argv.",
    )
    replicas: int = Field(
        default=1, ge=0, le=64,
        description="Local workers; > 1 (or any worker_urls / pd) puts a router in front."
        " 0 only with worker_urls or pd (the router fronts remote workers only).",
    )
    router_policy: RouterPolicy | None = Field(
        default=None, description="sglang-router policy (replicas > 1); None = router default."
    )
    router_command: tuple[str, ...] | None = Field(
        default=None,
        description="argv prefix of the router (the key then goes in its argv); None = the"
        " library's launcher for `router`, which passes the key outside argv.",
    )
    router: RouterKind | None = Field(
        default=None,
        description="Which router fronts a group: smg (SGLang Model Gateway) or sglang-router;"
        " None = smg when installed, else sglang-router.",
    )
    worker_urls: tuple[str, ...] = Field(
        default=(),
        description="Workers elsewhere (http://host:port), not launched by the library but"
        " routed to, health-checked and reported; they are sent the group's API key.",
    )
    router_metrics_host: str = Field(
        default="127.0.0.1", min_length=1,
        description="Bind address of the router's Prometheus listener (loopback by default).",
    )
    router_metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Port of the router's Prometheus listener; None reserves a free one.",
    )
    pd: PDTopology | None = Field(
        default=None,
        description="Disaggregated prefill/decode workers (GPU-only) the router fronts in PD mode.",
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc, "ServerConfig", list(type(self).model_fields)) from None

    @field_validator("launch_command", "router_command")
    @classmethod
    def _non_empty_command(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or not value[0]):
            raise ValueError("must be a non-empty argv list (no shell string)")
        return value

    @field_validator("worker_urls")
    @classmethod
    def _worker_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        urls = tuple(normalize_worker_url(url) for url in value)
        if len(set(urls)) != len(urls):
            raise ValueError("lists a worker twice")
        return urls

    @field_validator("lora_paths")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not name or _ADAPTER_NAME_CHARS & set(name):
                raise ValueError(f"adapter name {name!r} must be non-empty, without '=', ':', '/'"
                                 " or spaces")
            if not path or path.startswith("-"):
                raise ValueError(f"adapter {name!r}: path must be non-empty, not a flag: {path!r}")
        return value

    @field_validator("lora_target_modules")
    @classmethod
    def _target_modules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not module or module.startswith("-") for module in value):
            raise ValueError("module names must be non-empty and not start with '-'")
        return value

    @field_validator("served_model_name")
    @classmethod
    def _no_colon(cls, value: str | None) -> str | None:
        if value is not None and ":" in value:
            raise ValueError("must not contain ':' (SGLang uses it to select LoRA adapters)")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> ServerConfig:
        if (self.sleep_timeout is not None and self.inactivity_timeout is not None
                and self.sleep_timeout >= self.inactivity_timeout):
            raise ValueError(
                f"sleep_timeout ({self.sleep_timeout:g} s) must be below inactivity_timeout "
                f"({self.inactivity_timeout:g} s): the sleep comes first, the stop later"
            )
        for arg in self.extra_args:
            flag = _flag_name(arg)
            for managed, source in _MANAGED_FLAGS.items():
                if _spells(flag, managed):
                    raise ValueError(
                        f"extra_args may not contain {flag}: the library sets it from {source}"
                    )
            for field, flags in {**_TYPED_FLAGS, **_LORA_FLAGS}.items():
                if any(_spells(flag, name) for name in flags):
                    raise ValueError(f"extra_args may not contain {flag}: use ServerConfig.{field}")
        if self.enable_lora is False and self.lora_paths:
            raise ValueError("lora_paths needs LoRA: leave enable_lora unset or True")
        if self.nnodes is not None and self.node_rank is not None and self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank ({self.node_rank}) must be < nnodes ({self.nnodes})")
        if (self.nnodes or 1) > 1 and not self.dist_init_addr:
            raise ValueError("nnodes > 1 needs dist_init_addr (host:port of node 0)")
        if self.is_group and (self.nnodes or 1) > 1:
            raise ValueError("a router group cannot be combined with multi-node (nnodes > 1)")
        if not self.is_group and self.router_policy is not None:
            raise ValueError("router_policy needs a router group (replicas > 1 or worker_urls)")
        if self.replicas == 0 and not (self.worker_urls or self.pd):
            raise ValueError("replicas=0 needs worker_urls or pd (workers the router fronts)")
        if self.pd is not None and (self.replicas > 1 or self.worker_urls):
            raise ValueError("pd lists every worker itself: no replicas > 1, no worker_urls")
        return self

    @property
    def is_group(self) -> bool:
        """Whether a router fronts the workers (more than one local, or any remote/PD)."""
        return self.replicas > 1 or bool(self.worker_urls) or self.pd is not None

    @property
    def local_replicas(self) -> int:
        """How many workers the library launches itself (none in PD mode: pd lists them)."""
        return 0 if self.pd is not None else self.replicas

    @property
    def resolved_launch_command(self) -> list[str]:
        """The argv prefix actually used to launch the server."""
        return list(self.launch_command or DEFAULT_LAUNCH_COMMAND)

    def server_args(
        self,
        model_path: str,
        *,
        port: int,
        api_key: str | None,
        base_gpu_id: int | None = None,
        config_file: str | None = None,
    ) -> list[str]:
        """SGLang flags for one server: model, bind address, key, typed options, extra_args.

        With ``config_file`` (a file holding :meth:`secret_args`), the key is not rendered:
        ``--config FILE`` names the file instead, so ``ps`` never shows it.
        """
        args = [*_flag("--model-path", model_path), "--host", self.host, "--port", str(port)]
        if config_file is not None:
            args += ["--config", config_file]
        elif api_key is not None:
            args += _flag("--api-key", api_key)
        values: Mapping[str, object] = {
            field: getattr(self, field) for field in _TYPED_FLAGS
        }
        if base_gpu_id is not None:
            values = {**values, "base_gpu_id": base_gpu_id}
        for field, flags in _TYPED_FLAGS.items():
            value = values[field]
            if value is not None:
                args += _flag(flags[0], str(value))
        args += self.lora_args()
        args += self.switch_args()
        args += list(self.extra_args)
        return args

    def switch_args(self) -> list[str]:
        """The store-true switches the library's own features need, each once (not again
        when ``extra_args`` has it): ``--enable-metrics`` for ``keep_alive_on_traffic`` (the
        watchdog reads /metrics), the warm sleep's memory saver and weights backup."""
        wanted = [_METRICS_FLAG] if self.keep_alive_on_traffic else []
        for field, flag in _WARM_SLEEP_SWITCHES.items():
            value = getattr(self, field)
            if value or (value is None and self.sleep_timeout is not None):
                wanted.append(flag)
        given = [_flag_name(arg) for arg in self.extra_args]
        return [flag for flag in wanted if not any(_spells(name, flag) for name in given)]

    def for_warm_sleep(self) -> ServerConfig:
        """This config with the warm sleep's switches on where they are unset (a pool member
        that makes room by sleeping, without a ``sleep_timeout`` of its own)."""
        unset = {field: True for field in _WARM_SLEEP_SWITCHES if getattr(self, field) is None}
        return self.model_copy(update=unset) if unset else self

    @property
    def lora_enabled(self) -> bool:
        """Whether the server serves LoRA adapters (``enable_lora`` or any ``lora_paths``)."""
        return bool(self.enable_lora or self.lora_paths)

    def lora_args(self) -> list[str]:
        """SGLang's LoRA flags: ``--enable-lora``, ``--lora-paths NAME=PATH ...``,
        ``--lora-target-modules M ...`` (the two numbers are in the typed flags)."""
        args: list[str] = []
        if self.lora_enabled:
            args.append("--enable-lora")
        if self.lora_paths:
            args += ["--lora-paths", *(f"{name}={path}" for name, path in self.lora_paths.items())]
        if self.lora_target_modules:
            args += ["--lora-target-modules", *self.lora_target_modules]
        return args

    def command(
        self, model_path: str, *, port: int, api_key: str | None, config_file: str | None = None
    ) -> list[str]:
        """The full launch argv for a single server (see :meth:`server_args`)."""
        return self.resolved_launch_command + self.server_args(
            model_path, port=port, api_key=api_key, config_file=config_file
        )

    def secret_args(self, api_key: str) -> dict[str, str]:
        """The flags that go into the private ``--config`` file instead of argv: the API key
        and, when set, the admin key."""
        values = {"api-key": api_key}
        if self.admin_api_key is not None:
            values["admin-api-key"] = self.admin_api_key.get_secret_value()
        return values


class SGLangConfig(BaseModel):
    """Sampling and request options for chat completions (CAMEL's ``SGLangConfig`` superset).

    The OpenAI fields are sent as the SDK's keyword arguments; SGLang's extras (``top_k``,
    ``min_p``, ``regex``, …) travel in ``extra_body``. Unknown keys are rejected.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # OpenAI chat-completion fields
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    seed: int | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    # SGLang extras (sent in extra_body)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    min_tokens: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    regex: str | None = None
    ebnf: str | None = None
    stop_token_ids: list[int] | None = None
    stop_regex: str | list[str] | None = None
    no_stop_trim: bool | None = None
    ignore_eos: bool | None = None
    continue_final_message: bool | None = None
    skip_special_tokens: bool | None = None
    lora_path: str | None = None
    separate_reasoning: bool | None = None
    stream_reasoning: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_hidden_states: bool | None = None
    rid: str | None = None
    priority: int | None = None
    custom_params: dict[str, Any] | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc, "model_config_dict", list(type(self).model_fields)) from None

    @model_validator(mode="after")
    def _check_exclusive(self) -> SGLangConfig:
        constrained = [
            name for name in ("response_format", "regex", "ebnf") if getattr(self, name) is not None
        ]
        if len(constrained) > 1:
            raise ValueError(f"only one of {', '.join(constrained)} may be set")
        # a malformed pattern fails here, not as a 400 after a server launch
        for name in ("regex", "stop_regex"):
            if getattr(self, name) is not None:
                from ._requests import check_regex  # here: it imports openai, `--help` does not

                check_regex(getattr(self, name), name)
        return self

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> SGLangConfig:
        """Validate a CAMEL-style ``model_config_dict``."""
        if config is None:
            return cls()
        if not isinstance(config, Mapping):
            raise ConfigError(
                f"model_config_dict must be a mapping, got {type(config).__name__}"
            )
        bad = [key for key in config if not isinstance(key, str)]
        if bad:
            raise ConfigError(f"model_config_dict keys must be strings, got {bad!r}")
        return cls(**config)

    def request_kwargs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split the set options into (SDK keyword arguments, ``extra_body``)."""
        standard: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, value in self:
            if value is None or name == "stream":
                continue
            (standard if name in _OPENAI_FIELDS else extra)[name] = value
        return standard, extra


_OPENAI_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "n",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "seed",
        "user",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
    }
)
