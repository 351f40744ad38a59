"""SGLang's own code judges the stand-in's native/admin surface and its ``--config`` parsing.

* ``--config``: SGLang's ``ConfigArgumentMerger`` with SGLang's parser must give the same
  merged argv as the stand-in's merger, and refuse what the stand-in refuses.
* ``/generate``: answers decode with the API contract (``sglang.api.v1.api_types``:
  ``GenerateResponse``, ``GenerateStreamError``); the contract's own 400 text for an
  unknown ``sampling_params`` key is the stand-in's.
* ``/v1/embeddings``: ``EmbeddingResponse`` (no undeclared keys); bodies we accept validate
  as ``EmbeddingRequest``.
* LoRA, weights, abort: answer keys are the fields of io_struct's structs (read from its
  source with ``ast``: importing io_struct needs transformers, absent on this CPU install);
  ``/abort_request`` refuses what ``AbortRequest`` refuses.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sglang.api.v1 import api_types
from sglang.srt.entrypoints.openai import protocol
from sglang.srt.utils.server_args_config_parser import ConfigArgumentMerger

from sglang_backend import _http
from sglang_backend.testing._cli import build_parser
from sglang_backend.testing._config import merge_config
from tests.standin.conftest import Standin, StandinFactory

from .conftest import SGLANG_DIR, judge, sglang_parser


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    factory = StandinFactory(tmp_path_factory.mktemp("embedder"))
    try:
        server = factory.launch("--is-embedding")
        with _http.httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as client:
            yield client
    finally:
        factory.close()


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    factory = StandinFactory(tmp_path_factory.mktemp("native"))
    try:
        server: Standin = factory.launch(
            "--enable-lora", "--lora-paths", "first=/a/first", "--reasoning-parser", "qwen3"
        )
        with _http.httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as client:
            yield client
    finally:
        factory.close()


# --------------------------------------------------------------------------- --config


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CONFIGS = [
    ("scalars", "api-key: secret\nport: 31000\ncontext-length: 8k\ntool-call-parser: qwen25\n"),
    ("switches", "skip-server-warmup: true\nenable-metrics: false\nis-embedding: true\n"),
    ("lists", "lora-target-modules: [q_proj, v_proj]\nenable-lora: true\n"),
    ("empty", ""),
]


@pytest.mark.parametrize("text", [c[1] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_config_merge_is_sglangs(tmp_path: Path, text: str) -> None:
    config = _write(tmp_path, text)
    argv = ["--model-path", "m", "--config", config, "--port", "5"]
    theirs = ConfigArgumentMerger(sglang_parser()).merge_config_with_args(list(argv))
    ours, _ = merge_config(build_parser(), list(argv))
    assert ours == theirs
    parsed = sglang_parser().parse_args(theirs)
    assert parsed.port == 5  # the command line wins over the file


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("lora-paths: [a=b]\n", "c.yaml"),
        ("- a\n", "c.yaml"),
        ("port: 1\n", "c.json"),
    ],
)
def test_config_refusals_are_sglangs(tmp_path: Path, text: str, name: str) -> None:
    config = _write(tmp_path, text, name)
    argv = ["--model-path", "m", "--config", config]
    with pytest.raises(ValueError, match=r".") as theirs:
        ConfigArgumentMerger(sglang_parser()).merge_config_with_args(list(argv))
    with pytest.raises(ValueError, match=r".") as ours:
        merge_config(build_parser(), list(argv))
    assert str(ours.value) == str(theirs.value)


def test_underscore_keys_fail_in_sglang_too(tmp_path: Path) -> None:
    config = _write(tmp_path, "skip_server_warmup: true\n")
    merged = ConfigArgumentMerger(sglang_parser()).merge_config_with_args(
        ["--model-path", "m", "--config", config]
    )
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as info:
        sglang_parser().parse_args(merged)
    assert info.value.code == 2
    assert "unrecognized arguments: --skip_server_warmup" in stderr.getvalue()


# --------------------------------------------------------------------------- /generate


def test_generate_answers_decode_with_the_contract(native: Any) -> None:
    single = native.post("/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 4}}).json()
    api_types.GenerateResponse.from_json_value(single)
    batch = native.post(
        "/generate", json={"text": ["a", "b"], "sampling_params": {"n": 2, "max_new_tokens": 2}}
    )
    assert len(batch.json()) == 4
    for item in batch.json():
        api_types.GenerateResponse.from_json_value(item)
    with native.stream(
        "POST", "/generate", json={"text": "hi", "stream": True, "sampling_params": {"max_new_tokens": 3}}
    ) as reply:
        text = "".join(reply.iter_text())
    chunks = [b[len("data: ") :] for b in text.split("\n\n") if b.strip()]
    assert chunks[-1] == "[DONE]"
    for chunk in chunks[:-1]:
        api_types.GenerateResponse.from_json_value(json.loads(chunk))


def test_generate_stream_error_decodes(native: Any) -> None:
    body = {"text": "x", "stream": True, "sampling_params": {"temperature": -1}}
    with native.stream("POST", "/generate", json=body) as reply:
        text = "".join(reply.iter_text())
    first = json.loads(text.split("\n\n")[0][len("data: ") :])
    api_types.GenerateStreamError.from_json_value(first)


@pytest.mark.parametrize("params", [{"max_tokens": 1}, {"n": 1, "bogus": True}, {"thinking_budget": 3}])
def test_unknown_sampling_key_message_is_the_contracts(native: Any, params: dict[str, Any]) -> None:
    body = {"text": "x", "sampling_params": params}
    with pytest.raises(api_types.JsonContractError) as theirs:
        api_types.GenerateRequest.from_json_value(body)
    reply = native.post("/generate", json=body)
    assert reply.status_code == 400
    assert reply.json() == {"error": str(theirs.value)}


def test_generate_bodies_we_accept_are_requests(native: Any) -> None:
    for body in (
        {"text": ["a", "b"], "sampling_params": [{"max_new_tokens": 1}, {"max_new_tokens": 2}]},
        {"input_ids": [[1, 2], [3]], "rid": ["r1", "r2"], "sampling_params": {"max_new_tokens": 1}},
        {"text": "x", "lora_path": "first", "sampling_params": {"max_new_tokens": 1}},
    ):
        api_types.GenerateRequest.from_json_value(body)
        assert native.post("/generate", json=body).status_code == 200, body


# --------------------------------------------------------------------------- embeddings


def test_embedding_response_is_sglangs(embedder: Any) -> None:
    for body in (
        {"input": "hello world"},
        {"input": ["a", "b"], "encoding_format": "base64"},
        {"input": [1, 2, 3]},
        {"input": [[1, 2], [3]]},
    ):
        protocol.EmbeddingRequest.model_validate(body)
        reply = embedder.post("/v1/embeddings", json=body)
        assert reply.status_code == 200, reply.text
        judge(protocol.EmbeddingResponse, reply.json())


def test_embedding_error_is_sglangs(embedder: Any) -> None:
    reply = embedder.post("/v1/embeddings", json={"input": "  "})
    judge(protocol.ErrorResponse, reply.json())


# --------------------------------------------------------------------------- admin bodies


@functools.cache
def _io_structs() -> dict[str, tuple[set[str], list[str]]]:
    """io_struct's classes: their annotated field names and their base class names."""
    tree = ast.parse((SGLANG_DIR / "srt/managers/io_struct.py").read_text())
    found: dict[str, tuple[set[str], list[str]]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names = {
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
            found[node.name] = (names, [b.id for b in node.bases if isinstance(b, ast.Name)])
    return found


def _fields(name: str) -> set[str]:
    """The fields of io_struct class *name*, inherited ones included."""
    own, bases = _io_structs()[name]
    out = set(own)
    for base in bases:
        if base in _io_structs():
            out |= _fields(base)
    return out


def test_lora_answers_carry_lorupdateoutput_fields(native: Any) -> None:
    body = {"lora_name": "second", "lora_path": "/a/second", "pinned": True}
    assert set(body) <= _fields("LoadLoRAAdapterReqInput")
    loaded = native.post("/load_lora_adapter", json=body).json()
    assert set(loaded) == _fields("LoRAUpdateOutput")
    unloaded = native.post("/unload_lora_adapter", json={"lora_name": "second"}).json()
    assert set(unloaded) == _fields("LoRAUpdateOutput")


def test_admin_bodies_are_io_struct_fields(native: Any) -> None:
    update = {"model_path": "/m", "load_format": "auto", "weight_version": "v9"}
    assert set(update) <= _fields("UpdateWeightFromDiskReqInput")
    assert set(native.post("/update_weights_from_disk", json=update).json()) == {
        "success", "message", "num_paused_requests",
    }  # fmt: skip
    assert {"tags"} <= _fields("ReleaseMemoryOccupationReqInput")
    assert {"tags"} <= _fields("ResumeMemoryOccupationReqInput")
    assert {"mode"} <= _fields("PauseGenerationReqInput")
    assert {"rid", "abort_all"} <= _fields("AbortReq")


def test_abort_refuses_what_the_contract_refuses(native: Any) -> None:
    with pytest.raises(api_types.JsonContractError):
        api_types.AbortRequest.from_json_value({"rid": ["a", "b"]})
    assert native.post("/abort_request", json={"rid": ["a", "b"]}).status_code == 422
    api_types.AbortRequest.from_json_value({"rid": "a", "abort_all": False})
    assert native.post("/abort_request", json={"rid": "a", "abort_all": False}).status_code == 200


def test_models_with_adapters_are_a_model_list(native: Any) -> None:
    models = judge(protocol.ModelList, native.get("/v1/models").json())
    adapters = [card for card in models.data if card.parent is not None]
    assert adapters
    assert all(card.max_model_len is None for card in adapters)


def test_api_key_from_a_config_file_reaches_server_args(tmp_path: Path) -> None:
    config = _write(tmp_path, "api-key: from-file\nadmin-api-key: admin-from-file\n")
    merged = ConfigArgumentMerger(sglang_parser()).merge_config_with_args(
        ["--model-path", "m", "--config", config]
    )
    parsed = sglang_parser().parse_args(merged)
    assert (parsed.api_key, parsed.admin_api_key) == ("from-file", "admin-from-file")
    ours, _ = merge_config(build_parser(), ["--model-path", "m", "--config", config])
    assert ours == merged


def test_logprobs_and_batch_streams_decode_with_the_contract(native: Any) -> None:
    body = {
        "text": ["hello there", "x"],
        "return_logprob": True,
        "top_logprobs_num": 2,
        "return_text_in_logprobs": True,
        "logprob_start_len": 0,
        "token_ids_logprob": [3, 4],
        "sampling_params": {"max_new_tokens": 3},
    }
    api_types.GenerateRequest.from_json_value(body)
    for item in native.post("/generate", json=body).json():
        decoded = api_types.GenerateResponse.from_json_value(item)
        assert decoded.meta_info is not None
        assert decoded.meta_info.output_token_logprobs is not None
    with native.stream("POST", "/generate", json={**body, "stream": True}) as reply:
        text = "".join(reply.iter_text())
    chunks = [b[len("data: ") :] for b in text.split("\n\n") if b.strip()]
    assert chunks[-1] == "[DONE]"
    indexes = {api_types.GenerateResponse.from_json_value(json.loads(c)).index for c in chunks[:-1]}
    assert indexes == {0, 1}
