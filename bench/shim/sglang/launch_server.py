"""``python -m sglang.launch_server ARGS`` → ``python -m sglang_backend.testing ARGS``.

The stand-in runs with ``SGLB_STANDIN_PYTHON`` (the main venv's interpreter, where the package
and its web stack are installed), with ``SGLB_STANDIN_EXTRA`` (a JSON list) appended to argv.
The shim directory is dropped from ``PYTHONPATH`` so nothing below imports this fake ``sglang``.
"""

import json
import os
import sys

python = os.environ.get("SGLB_STANDIN_PYTHON", sys.executable)
extra = json.loads(os.environ.get("SGLB_STANDIN_EXTRA", "[]"))
shim = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != shim
)
os.execv(python, [python, "-m", "sglang_backend.testing", *sys.argv[1:], *extra])
