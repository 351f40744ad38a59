"""Classified start errors: the pattern table, the pure classifier, and the pre-launch checks."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import sglang_backend
from sglang_backend import (
    GPUUnavailableError,
    ModelAccessError,
    ModelNotFoundError,
    ServerConfig,
    ServerCrashedError,
    ServerHungError,
    ServerOutOfMemoryError,
    ServerStartError,
    SGLangNotInstalledError,
    UnknownParserError,
)
from sglang_backend._diagnose import PATTERNS, _parser_names, check_before_launch, classify, start_error
from sglang_backend.testing import standin_command

NAMES = ["SGLangNotInstalledError", "ServerOutOfMemoryError", "ModelNotFoundError",
         "ModelAccessError", "GPUUnavailableError", "UnknownParserError", "PortInUseError"]


def test_the_classes_are_exported_start_errors_with_a_hint() -> None:
    for name in NAMES:
        cls = getattr(sglang_backend, name)
        assert name in sglang_backend.__all__
        assert issubclass(cls, ServerStartError)
        assert cls.default_hint
        assert cls.default_hint.endswith(".")
    assert issubclass(ServerHungError, ServerCrashedError)
    assert "ServerHungError" in sglang_backend.__all__


@pytest.mark.parametrize("entry", PATTERNS, ids=[p.kind for p in PATTERNS])
def test_each_sample_is_classified_as_its_own_entry(entry: object) -> None:
    from sglang_backend._diagnose import Pattern

    assert isinstance(entry, Pattern)
    assert entry.source
    noise = ["[2026-01-01 10:00:00 TP0] Load weight begin. avail mem=78.50 GB", "Traceback ..."]
    found = classify([*noise, entry.sample, "[2026-01-01] Received sigquit from a child process."])
    assert found is not None
    assert found.error is entry.error
    assert found.evidence == entry.sample.strip()


@pytest.mark.parametrize(
    ("line", "error"),
    [
        # wordings other than the samples, as printed by older or other code paths
        ("torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB",
         ServerOutOfMemoryError),
        ("RuntimeError: CUDA error: out of memory", ServerOutOfMemoryError),
        ("OSError: You are trying to access a gated repo.", ModelAccessError),
        ("huggingface_hub.errors.RepositoryNotFoundError: 404 Client Error. (Request ID: x)"
         " Repository Not Found for url: https://huggingface.co/api/models/a/b/revision/main.",
         ModelNotFoundError),
        ("RuntimeError: No CUDA GPUs are available", GPUUnavailableError),
        ("AssertionError: Torch not compiled with CUDA enabled", GPUUnavailableError),
        ("RuntimeError: CUDA error: CUDA driver version is insufficient for CUDA runtime version",
         GPUUnavailableError),
        ("launch_server.py: error: argument --reasoning-parser: invalid choice: 'x' (choose from 'qwen3')",
         UnknownParserError),
        ("ModuleNotFoundError: No module named 'sglang'", SGLangNotInstalledError),
    ],
)
def test_other_real_wordings(line: str, error: type[ServerStartError]) -> None:
    found = classify(["something", line])
    assert found is not None
    assert found.error is error


def test_the_hub_not_found_text_that_mentions_gated_repos_is_not_found() -> None:
    text = ("Repository Not Found for url: https://huggingface.co/api/models/a/b.\n"
            "If you are trying to access a private or gated repo, make sure you are authenticated.")
    found = classify(text.splitlines())
    assert found is not None
    assert found.error is ModelNotFoundError


def test_unrelated_output_stays_a_plain_start_error() -> None:
    lines = ["RuntimeError: weights are corrupt", "No module named 'flashinfer'"]
    assert classify(lines) is None
    exc = start_error("exited", output=lines, returncode=1, command=["x"], log_tail=lines)
    assert type(exc) is ServerStartError
    assert exc.evidence is None
    assert exc.hint is None


def test_a_classified_error_says_evidence_and_hint_and_keeps_the_tail() -> None:
    line = "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static."
    exc = start_error("the server exited during start with signal SIGKILL", output=[line],
                      returncode=-9, command=["python", "-m", "sglang.launch_server"],
                      log_tail=[line])
    assert isinstance(exc, ServerOutOfMemoryError)
    assert exc.evidence == line
    assert exc.hint is not None
    assert "mem_fraction_static" in exc.hint
    text = str(exc)
    assert f"evidence: {line}" in text
    assert f"hint: {exc.hint}" in text
    assert "last server output" in text
    assert exc.summary.startswith("the server exited")


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="SGLang is installed")
async def test_sglang_not_installed_is_found_before_launch() -> None:
    with pytest.raises(SGLangNotInstalledError) as info:
        await check_before_launch("org/model", ServerConfig())
    assert sys.executable in str(info.value)
    assert info.value.hint is not None
    assert "--model-path" not in info.value.hint
    assert info.value.returncode is None  # nothing was launched


async def test_a_custom_launch_command_is_not_checked_for_sglang() -> None:
    config = ServerConfig(launch_command=(sys.executable, "-m", "sglang_backend.testing"))
    assert await check_before_launch("org/model", config) == {}


@pytest.fixture
def fake_sglang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An importable ``sglang`` exposing parser lists where SGLang 0.5.23 keeps them."""
    root = tmp_path / "site"
    for package in ("sglang", "sglang/srt", "sglang/srt/function_call", "sglang/srt/parser"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "sglang/srt/function_call/function_call_parser.py").write_text(
        "class FunctionCallParser:\n"
        "    ToolCallParserEnum = {'llama3': None, 'qwen': None, 'qwen25': None}\n"
    )
    (root / "sglang/srt/parser/reasoning_parser.py").write_text(
        "class ReasoningParser:\n    DetectorMap = {'deepseek-r1': None, 'qwen3': None}\n"
    )
    monkeypatch.syspath_prepend(str(root))
    _parser_names.cache_clear()
    yield
    _parser_names.cache_clear()
    for name in [m for m in sys.modules if m == "sglang" or m.startswith("sglang.")]:
        del sys.modules[name]


@pytest.mark.usefixtures("fake_sglang")
async def test_unknown_parsers_are_found_before_launch_against_sglangs_lists() -> None:
    with pytest.raises(UnknownParserError) as info:
        await check_before_launch("org/model", ServerConfig(tool_call_parser="qwen3_coder_typo"))
    assert info.value.evidence is not None
    assert "llama3, qwen, qwen25" in info.value.evidence
    with pytest.raises(UnknownParserError, match="reasoning parser"):
        await check_before_launch("org/model", ServerConfig(reasoning_parser="r1"))
    ok = ServerConfig(tool_call_parser="qwen25", reasoning_parser="qwen3")
    assert await check_before_launch("org/model", ok, download=False) == {}


# ---------------------------------------------------------------------------- the CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sglang_backend.cli", *args], check=False, capture_output=True,
        text=True, timeout=90, stdin=subprocess.DEVNULL,
    )


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="SGLang is installed")
def test_cli_without_sglang_says_to_install_it_not_to_check_gpu_memory() -> None:
    result = _cli("chat", "--model-path", "Qwen/Qwen2.5-0.5B-Instruct", "Hi")
    assert result.returncode == 1
    text = result.stderr
    assert "SGLang is not installed" in text
    assert "sglang-backend[server]" in text
    assert "evidence: " in text
    assert "GPU memory" not in text
    assert "check --model-path" not in text
    assert "last server output" not in text  # nothing was launched


def test_cli_prints_the_classified_hint_and_evidence() -> None:
    launch = shlex.join(standin_command())
    result = _cli("chat", "--model-path", "m", "--launch-command", launch,
                  "--server-arg=--standin-fail-with=oom", "Hi")
    assert result.returncode == 1
    assert ServerOutOfMemoryError.default_hint is not None
    assert f"Try: {ServerOutOfMemoryError.default_hint}" in result.stderr
    assert "  evidence: torch.OutOfMemoryError: CUDA out of memory." in result.stderr


async def test_a_model_without_sglang_fails_before_any_launch() -> None:
    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("SGLang is installed")
    from sglang_backend import AsyncSGLangModel

    events: list[object] = []
    model = AsyncSGLangModel("Qwen/Qwen2.5-0.5B-Instruct", on_event=events.append)
    try:
        with pytest.raises(SGLangNotInstalledError):
            await model.start()
    finally:
        await model.aclose()
    kinds = [getattr(event, "kind", None) for event in events]
    assert "start_failed" in kinds
    assert "phase" not in kinds  # no process ever ran


def test_the_errors_reference_lists_every_start_error_with_its_hint() -> None:
    page = (Path(__file__).parent.parent / "docs" / "reference" / "errors.md").read_text()
    for name in [*NAMES, "LaunchCommandNotFoundError"]:
        cls = getattr(sglang_backend, name)
        assert f"| `{name}` |" in page
        assert cls.default_hint in page, name
    for entry in PATTERNS:
        if entry.hint:
            assert entry.hint in page
        if entry.kind != "port-in-use":
            assert f"`{entry.kind}`" in page
    assert ServerHungError.hint in page
