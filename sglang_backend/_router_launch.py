"""``python -m sglang_backend._router_launch {smg|sglang-router} ARGS…``: a router, key not in argv.

Neither smg nor sglang-router reads its ``--api-key`` from the environment or a file, and
``/proc/PID/cmdline`` is world-readable. Both expose their parser and launcher as Python
functions, so this entry point takes the key from an environment variable (``/proc/PID/environ``
is readable by the owner only), removes it from the environment the router's own children
would inherit, and hands ``--api-key`` to the router's parser in-process: ``ps`` shows the
other flags only.
"""

from __future__ import annotations

import importlib
import os
import sys

KEY_ENV = "SGLANG_BACKEND_ROUTER_API_KEY"

_MODULES = {"smg": "smg.launch_router", "sglang-router": "sglang_router.launch_router"}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in _MODULES:
        sys.exit(f"usage: python -m sglang_backend._router_launch {{{'|'.join(_MODULES)}}} ARGS")
    module = importlib.import_module(_MODULES[argv[0]])
    args = list(argv[1:])
    key = os.environ.pop(KEY_ENV, None)
    if key:
        args.append(f"--api-key={key}")
    module.launch_router(module.parse_router_args(args))


if __name__ == "__main__":
    main(sys.argv[1:])
