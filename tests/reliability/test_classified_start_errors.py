"""Each classified start error, from the real text the stand-in prints where SGLang prints it
(``--standin-fail-with KIND`` uses the sample line of sglang_backend._diagnose.PATTERNS)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sglang_backend import (
    AsyncSGLangModel,
    GPUUnavailableError,
    ModelAccessError,
    ModelNotFoundError,
    ServerConfig,
    ServerOutOfMemoryError,
    ServerStartError,
    SGLangNotInstalledError,
    UnknownParserError,
)
from sglang_backend._diagnose import pattern

from ..conftest import MODEL
from ._support import HELLO

Standin = Callable[..., ServerConfig]

# kind → (error class, return code: scheduler failures SIGKILL the launcher, launcher
# tracebacks exit 1, argparse exits 2)
CASES = {
    "not-installed": (SGLangNotInstalledError, 1),
    "oom": (ServerOutOfMemoryError, -9),
    "kv-cache-oom": (ServerOutOfMemoryError, -9),
    "gated": (ModelAccessError, 1),
    "unauthorized": (ModelAccessError, 1),
    "model-not-found": (ModelNotFoundError, 1),
    "no-gpu": (GPUUnavailableError, -9),
    "driver-mismatch": (GPUUnavailableError, -9),
    "unknown-parser": (UnknownParserError, 2),
}


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_start_failure_is_classified_from_the_real_text(standin: Standin, kind: str) -> None:
    error, returncode = CASES[kind]
    entry = pattern(kind)
    model = AsyncSGLangModel(MODEL, server=standin(fail_with=kind))
    try:
        with pytest.raises(error) as info:
            await model.run(HELLO)
    finally:
        await model.aclose()
    exc = info.value
    assert isinstance(exc, ServerStartError)
    assert exc.returncode == returncode
    assert exc.evidence is not None
    assert entry.regex.search(exc.evidence)
    # The evidence is the line the server printed, as printed (argparse adds its prog).
    assert entry.sample.split(": error: ")[-1] in exc.evidence
    assert exc.hint
    assert exc.hint in str(exc)
    assert exc.hint == (entry.hint or error.default_hint)


async def test_sglang_missing_in_another_python_is_classified_from_cpythons_own_text() -> None:
    """A launch command the pre-launch check cannot see into (``env python3``): the real
    interpreter's runpy message at exit is recognised."""
    import importlib.util
    import shutil
    import subprocess

    python = shutil.which("python3")
    if python is None:
        pytest.skip("no python3 on PATH")
    probe = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('sglang'))"],
                           capture_output=True, text=True, check=False, timeout=30)
    if probe.stdout.strip() != "None" or importlib.util.find_spec("sglang") is not None:
        pytest.skip("SGLang is installed")
    config = ServerConfig(launch_command=("/usr/bin/env", "python3", "-m", "sglang.launch_server"),
                          startup_timeout=60, env={"HF_HUB_OFFLINE": "1"})  # no download phase
    model = AsyncSGLangModel(MODEL, server=config)
    try:
        with pytest.raises(SGLangNotInstalledError) as info:
            await model.start()
    finally:
        await model.aclose()
    assert info.value.returncode == 1
    assert info.value.evidence is not None
    assert info.value.evidence.endswith("(ModuleNotFoundError: No module named 'sglang')")
