"""``--config FILE.yaml``: parsed as SGLang 0.5.23's ConfigArgumentMerger does, key enforced."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import psutil
import pytest

from sglang_backend._http import httpx
from sglang_backend.testing import standin_command
from sglang_backend.testing._cli import build_parser, parse_args
from sglang_backend.testing._config import merge_config
from tests.standin.conftest import MODEL, REPO_ROOT, StandinFactory


def _write(tmp_path: Path, text: str, name: str = "args.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_file_flags_go_first_so_cli_wins(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        "port: 4000\nskip-server-warmup: true\nenable-metrics: false\n"
        "context-length: 8k\nlora-target-modules: [q_proj, v_proj]\nempty-list: []\n",
    )
    merged, from_file = merge_config(
        build_parser(), ["--model-path", "m", "--config", str(config), "--port", "5"]
    )
    assert merged[: len(from_file)] == from_file
    # store_true: true adds the bare flag, false drops it; lists spread; empty lists vanish
    assert from_file == [
        "--port", "4000", "--skip-server-warmup", "--context-length", "8k",
        "--lora-target-modules", "q_proj", "v_proj",
    ]  # fmt: skip
    args = parse_args(["--model-path", "m", "--config", str(config), "--port", "5"])
    assert args.port == 5
    assert args.skip_server_warmup is True
    assert args.enable_metrics is False
    assert args.context_length == 8000  # SI k, as SGLang
    assert args.lora_target_modules == ["q_proj", "v_proj"]


def test_non_store_true_booleans_become_values(tmp_path: Path) -> None:
    config = _write(tmp_path, "standin-ignore-sigterm: true\nmodel-path: from-file\n")
    merged, _ = merge_config(build_parser(), ["--config", str(config)])
    assert merged == ["--standin-ignore-sigterm", "true", "--model-path", "from-file"]
    assert parse_args(["--config", str(config)]).standin_ignore_sigterm is True


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("port: 1\n", "args.json", "Config file must be YAML format, got: .json"),
        ("- a\n- b\n", "args.yaml", "Config file must contain a dictionary at root level"),
        (
            "lora-paths: [a=b]\n",
            "args.yml",
            "Unsupported config option 'lora_paths' with action 'LoRAPathAction'",
        ),
    ],
)
def test_refused_files_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, name: str, message: str
) -> None:
    config = _write(tmp_path, text, name)
    with pytest.raises(SystemExit) as info:
        parse_args(["--model-path", "m", "--config", str(config)])
    assert info.value.code == 1
    assert message in capsys.readouterr().err


def test_missing_and_doubled_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--model-path", "m", "--config", str(tmp_path / "gone.yaml")])
    assert info.value.code == 1
    assert "Config file not found" in capsys.readouterr().err
    config = _write(tmp_path, "port: 1\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config), "--config", str(config)])
    assert "Multiple config files specified! Only one allowed." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--model-path", "m", "--config"])
    assert "No config file specified after --config flag!" in capsys.readouterr().err


def test_underscore_keys_are_refused_like_sglang(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # SGLang emits ``--{key}`` verbatim, so ``skip_server_warmup`` is an unrecognized flag there.
    config = _write(tmp_path, "skip_server_warmup: true\ntensor_parallel_size: 2\n")
    with pytest.raises(SystemExit) as info:
        parse_args(["--model-path", "m", "--config", str(config)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --skip_server_warmup --tensor_parallel_size" in err


async def test_api_key_from_file_is_enforced(standins: StandinFactory, tmp_path: Path) -> None:
    key = secrets.token_hex(16)
    config = _write(tmp_path, f"api-key: {key}\nserved-model-name: from-config\n")
    server = standins.launch("--config", str(config), api_key=None)
    assert not any(key in part for part in psutil.Process(server.proc.pid).cmdline())
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        refused = await client.get("/v1/models")
        assert refused.status_code == 401
        assert refused.json() == {"error": "Unauthorized"}
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        assert ok.json()["data"][0]["id"] == "from-config"
        info = await client.get("/server_info", headers={"Authorization": f"Bearer {key}"})
        assert key not in info.json()["launch_command"]
    # the warm-up sent the key from the file: it succeeded, the server is ready
    assert "ready" in [e["event"] for e in server.events()]


def test_bad_file_ends_the_process_with_1(tmp_path: Path) -> None:
    config = _write(tmp_path, "just a string\n")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [*standin_command(), "--model-path", MODEL, "--config", str(config)],
        capture_output=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert b"Config file must contain a dictionary at root level" in proc.stderr
