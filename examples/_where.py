"""Where the examples' model runs (shared by every example in this folder).

``$SGLANG_URL`` (and ``$SGLANG_API_KEY``) if set: connect to that server. Otherwise launch real
SGLang on a GPU machine with SGLang installed, else the CPU stand-in server, so the examples run
anywhere. ``SGLANG_MODEL`` picks the model; ``SGLANG_BACKEND_STANDIN=1`` forces the stand-in.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any

from sglang_backend import ServerConfig
from sglang_backend.testing import standin_command

MODEL = os.environ.get("SGLANG_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")


def model_options(**server_options: Any) -> dict[str, Any]:
    """Keyword arguments for ``AsyncSGLangModel``/``SGLangModel``: ``url=`` or ``server=``."""
    if os.environ.get("SGLANG_URL"):
        return {"url": os.environ["SGLANG_URL"], "api_key": os.environ.get("SGLANG_API_KEY")}
    real = (
        not os.environ.get("SGLANG_BACKEND_STANDIN")
        and shutil.which("nvidia-smi") is not None
        and importlib.util.find_spec("sglang") is not None
    )
    launch = None if real else tuple(standin_command())
    return {"server": ServerConfig(launch_command=launch, **server_options)}
