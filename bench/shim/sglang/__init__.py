"""Benchmark shim, never installed: makes ``python -m sglang.launch_server`` run the stand-in.

Only ``bench/camel_ref.py`` puts this directory on ``PYTHONPATH`` (in the CAMEL venv), so the
reference implementation launches the stand-in exactly as it would launch SGLang.
"""
