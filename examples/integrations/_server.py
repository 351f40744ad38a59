"""Where the examples' model runs: $SGLANG_URL if set, else the CPU stand-in server.

On a GPU machine, replace ``standin_command()`` by nothing (SGLang itself is launched) and
pick a real model, e.g. ``Qwen/Qwen2.5-7B-Instruct``.
"""

from __future__ import annotations

import os
from typing import Any

from sglang_backend import ServerConfig
from sglang_backend.testing import standin_command

MODEL = os.environ.get("SGLANG_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")


def model_options() -> dict[str, Any]:
    if os.environ.get("SGLANG_URL"):
        return {"url": os.environ["SGLANG_URL"], "api_key": os.environ.get("SGLANG_API_KEY")}
    return {"server": ServerConfig(launch_command=standin_command(), tool_call_parser="qwen")}
