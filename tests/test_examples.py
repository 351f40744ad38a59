"""Every script in examples/ runs against the stand-in server and prints what it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for name in ("SGLANG_URL", "SGLANG_API_KEY", "SGLANG_MODEL"):
        env.pop(name, None)
    env["SGLANG_BACKEND_STANDIN"] = "1"  # even on a GPU machine with SGLang installed
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )


def test_every_example_is_covered() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == {
        "agent_tools.py", "sync_script.py", "structured_extraction.py", "streaming.py",
        "test_with_standin.py",
    }


def test_agent_loop_runs_the_tool_and_answers() -> None:
    result = run("examples/agent_tools.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    calls = [line for line in lines if line.startswith("tool call: get_weather(")]
    assert calls, result.stdout
    assert '"sky": "sunny"' in calls[0]  # the local tool ran
    final = [line for line in lines if line.startswith("final answer: ")]
    assert len(final) == 1
    assert "sunny" in final[0]  # the tool result went back to the model


def test_sync_script() -> None:
    result = run("examples/sync_script.py")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert int(out.split("prompt tokens: ")[1].split()[0]) > 0
    assert "reply: You said: Give me one tip" in out
    assert "(state ready)" in out
    assert "after the with block: state closed" in out


def test_structured_extraction() -> None:
    result = run("examples/structured_extraction.py")
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition("\n")
    assert head == "parsed: Invoice"
    invoice = json.loads(body)
    assert invoice["currency"] in ("EUR", "USD", "GBP")
    assert isinstance(invoice["items"], list)
    assert isinstance(invoice["paid"], bool)


def test_streaming() -> None:
    result = run("examples/streaming.py", "Say", "hello")
    assert result.returncode == 0, result.stderr
    text, usage = result.stdout.strip().splitlines()
    assert text.startswith("You said: Say hello")
    assert usage.startswith("[")
    assert "completion tokens]" in usage


@pytest.mark.timeout(180)
def test_pytest_fixture_example_passes() -> None:
    result = run("-m", "pytest", "examples/test_with_standin.py", "-q", "-p", "no:cacheprovider",
                 timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
