"""Chat ``response_format={"type": "structural_tag", ...}`` on the stand-in: outputs valid by construction."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from sglang_backend._http import httpx
from tests.standin.conftest import Standin

CITY = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"]}  # fmt: skip
TAG = {
    "type": "structural_tag",
    "structures": [
        {"begin": "<function=get_weather>", "schema": CITY, "end": "</function>"},
        {"begin": "<function=get_time>", "schema": {"type": "object"}, "end": "</function>"},
    ],
    "triggers": ["<function="],
}


@pytest.fixture(scope="module")
def http(shared: Standin) -> Iterator[Any]:
    with httpx.Client(base_url=shared.base_url, headers=shared.headers, timeout=60) as client:
        yield client


def chat(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    return {"model": "m", "messages": messages, "response_format": TAG, **extra}


def tagged(text: str) -> list[tuple[str, Any]]:
    """Every ``<function=NAME>JSON</function>`` in *text*, JSON parsed."""
    found = re.findall(r"<function=(get_weather|get_time)>(.*?)</function>", text, flags=re.S)
    return [(name, json.loads(body)) for name, body in found]


def test_output_follows_the_tag(http: Any) -> None:
    reply = http.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 200, reply.text
    content = reply.json()["choices"][0]["message"]["content"]
    calls = tagged(content)
    assert calls, content
    assert calls[0][0] == "get_weather"
    jsonschema.validate(calls[0][1], CITY)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampled_outputs_stay_valid(http: Any, seed: int) -> None:
    reply = http.post("/v1/chat/completions", json=chat(temperature=1.0, seed=seed))
    content = reply.json()["choices"][0]["message"]["content"]
    for name, document in tagged(content):
        jsonschema.validate(document, CITY if name == "get_weather" else {"type": "object"})
    assert content.count("<function=") == len(tagged(content))  # no trigger left unfinished


def test_streamed(http: Any) -> None:
    with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as reply:
        text = "".join(reply.iter_text())
    deltas = [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]
    content = "".join(d["choices"][0]["delta"].get("content") or "" for d in deltas if d["choices"])
    jsonschema.validate(tagged(content)[0][1], CITY)


@pytest.mark.parametrize(
    ("extra", "wording"),
    [
        ({"regex": "a+"}, "Only one of json_schema, regex, ebnf, or structural_tag can be set."),
        (
            {
                "response_format": {
                    **TAG,
                    "structures": [{"begin": "<f>", "schema": {"type": "nope"}, "end": "</f>"}],
                    "triggers": ["<f"],
                }
            },
            "Failed to compile structural_tag grammar: ",
        ),
        (
            {"response_format": {"type": "structural_tag", "format": {"type": "const_string", "value": "x"}}},
            "Failed to compile structural_tag grammar: only the legacy structural tag",
        ),
    ],
)
def test_refusals(http: Any, extra: dict[str, Any], wording: str) -> None:
    reply = http.post("/v1/chat/completions", json=chat(**extra))
    assert reply.status_code == 400
    assert reply.json()["message"].startswith(wording)


def test_shape_is_checked(http: Any) -> None:
    reply = http.post("/v1/chat/completions", json=chat(response_format={"type": "structural_tag"}))
    assert reply.status_code == 400
    assert reply.json()["type"] == "Bad Request"
