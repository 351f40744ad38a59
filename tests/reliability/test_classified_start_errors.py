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
