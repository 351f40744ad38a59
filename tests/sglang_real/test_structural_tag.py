"""Chat structural tags on the stand-in, judged by SGLang 0.5.23.

SGLang's ``ChatCompletionRequest`` must read the request's ``response_format`` as its legacy
structural tag, and the tag the stand-in compiles must be exactly the one SGLang hands its
grammar backend (``response_format.model_dump(by_alias=True)``). The answer must validate
as SGLang's ``ChatCompletionResponse`` and hold only complete tags whose JSON follows the
structure's schema. Refusal wording is read from SGLang's sampling params and grammar manager.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from sglang.srt.entrypoints.openai import protocol

from sglang_backend import _http
from sglang_backend.testing._protocol import ResponseFormat
from tests.standin.conftest import Standin

from .conftest import judge, sglang_source_says

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TAG = {
    "type": "structural_tag",
    "structures": [{"begin": "<function=get_weather>", "schema": SCHEMA, "end": "</function>"}],
    "triggers": ["<function="],
}


@pytest.fixture(scope="module")
def client(standin_plain: Standin) -> Iterator[Any]:
    with _http.httpx.Client(base_url=standin_plain.base_url, headers=standin_plain.headers,
                            timeout=60) as http:  # fmt: skip
        yield http


def body(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Weather?"}]
    return {"model": "judge-model", "messages": messages, "response_format": TAG, **extra}


def test_sglang_reads_the_same_tag() -> None:
    request = protocol.ChatCompletionRequest.model_validate(body())
    assert isinstance(request.response_format, protocol.LegacyStructuralTagResponseFormat)
    ours = ResponseFormat.model_validate(TAG).structural_tag()
    assert ours is not None
    assert json.loads(ours) == request.response_format.model_dump(by_alias=True)


@pytest.mark.parametrize("extra", [{}, {"temperature": 1.0, "seed": 7}])
def test_answer_holds_valid_tags(client: Any, extra: dict[str, Any]) -> None:
    """Free text until a trigger; every trigger starts a complete tag with valid JSON."""
    reply = client.post("/v1/chat/completions", json=body(**extra))
    assert reply.status_code == 200, reply.text
    parsed = judge(protocol.ChatCompletionResponse, reply.json())
    content = parsed.choices[0].message.content
    found = re.findall(r"<function=get_weather>(.*?)</function>", content, flags=re.S)
    if not extra:  # greedy: the model's first choice is the tag; sampled text may stay free
        assert found, content
    assert content.count("<function=") == len(found)
    for document in found:
        jsonschema.validate(json.loads(document), SCHEMA)


def test_refusal_wording_is_sglangs(client: Any) -> None:
    both = client.post("/v1/chat/completions", json=body(regex="a+"))
    assert both.status_code == 400
    message = both.json()["message"]
    sglang_source_says("srt/sampling/sampling_params.py", message)
    bad = {
        **TAG,
        "structures": [{"begin": "<f>", "schema": {"type": "nope"}, "end": "</f>"}],
        "triggers": ["<f"],
    }
    broken = client.post("/v1/chat/completions", json=body(response_format=bad))
    assert broken.status_code == 400
    assert broken.json()["message"].startswith("Failed to compile structural_tag grammar: ")
    sglang_source_says("srt/constrained/grammar_manager.py", 'f"Failed to compile {key[0]} grammar: ')
