"""SGLang's own code judges the key file: the library's argv plus its private ``--config`` file
parse to the same server arguments as the plain argv with the keys as flags."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import SecretStr
from sglang.srt.utils.server_args_config_parser import ConfigArgumentMerger

from sglang_backend import ServerConfig
from sglang_backend._secrets import PrivateArgsFile

from .conftest import parse_server_args, server_args_fields, sglang_parser

CONFIGS = [
    ServerConfig(),
    ServerConfig(tool_call_parser="qwen25", context_length=8192, extra_args=["--enable-metrics"]),
    ServerConfig(admin_api_key=SecretStr("admin-secret-key"), reasoning_parser="qwen3"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["plain", "typed", "admin-key"])
def test_argv_plus_key_file_means_what_the_plain_argv_means(config: ServerConfig) -> None:
    key = "sk-judge-0123456789abcdef"
    secret = PrivateArgsFile(config.secret_args(key))
    path = asyncio.run(secret.write())
    try:
        hidden = config.server_args("/models/m", port=31000, api_key=key, config_file=path)
        assert key not in " ".join(hidden)
        merged = ConfigArgumentMerger(sglang_parser()).merge_config_with_args(list(hidden))
        from_file: dict[str, Any] = server_args_fields(parse_server_args(merged))
    finally:
        secret.remove()
    plain = config.server_args("/models/m", port=31000, api_key=key)
    if config.admin_api_key is not None:
        plain += ["--admin-api-key", config.admin_api_key.get_secret_value()]
    assert "--config" not in plain
    from_argv = server_args_fields(parse_server_args(plain))
    assert from_file["api_key"] == key
    assert from_file == from_argv
