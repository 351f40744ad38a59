"""A small, faithful CPU stand-in for SGLang's HTTP server.

The stand-in accepts SGLang's command line, goes through SGLang's startup phases
(``server_args=…`` line, scheduler/detokenizer children, a load phase with the port
closed, bind, self warm-up, ``The server is fired up and ready to roll!``) and answers
SGLang's native and OpenAI-compatible endpoints with deterministic text, JSON that
validates against a requested schema, and tool calls.  Fault switches prefixed
``--standin-`` reproduce the hard cases (slow load, failure at load, slow warm-up,
ignored SIGTERM, crash after N requests, slow tokens, an events file).

Run it with ``python -m sglang_backend.testing --model-path M [SGLang flags]``; the
argv prefix is :func:`standin_command`.  Importing this package is cheap: the web
stack (FastAPI, uvicorn) is imported only by the server submodules.
"""

from __future__ import annotations

import sys

__all__ = ["STANDIN_VERSION", "standin_command"]

#: The SGLang version the stand-in imitates (reported by ``/server_info``).
STANDIN_VERSION = "0.5.23"


def standin_command() -> list[str]:
    """Return the argv prefix that runs the stand-in server with this interpreter.

    Append SGLang flags (``--model-path M --host H --port P --api-key K …``).
    """
    return [sys.executable, "-m", "sglang_backend.testing"]
