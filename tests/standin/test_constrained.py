"""Constrained decoding in the stand-in: regex, EBNF and JSON schema outputs are valid by construction."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from sglang_backend._http import httpx
from tests.standin.conftest import Standin, StandinFactory

USER = [{"role": "user", "content": "Give me something."}]


@pytest.fixture
def http(shared: Standin) -> Iterator[httpx.Client]:
    """A plain HTTP client for the shared stand-in."""
    with httpx.Client(base_url=shared.base_url, headers=shared.headers, timeout=30) as client:
        yield client


def chat(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": "standin-model", "messages": USER, **body})


def complete(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/completions", json={"model": "standin-model", "prompt": "Say", **body})


@pytest.mark.parametrize(
    "pattern",
    [r"\d{3}-\d{4}", r"[a-z]+@[a-z]+\.com", r"(yes|no|maybe)", r"[A-Z][a-z]{2,5} [0-9]{1,2}"],
)
@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_regex_output_matches_the_pattern(http: httpx.Client, pattern: str, seed: int | None) -> None:
    extra = {} if seed is None else {"seed": seed, "temperature": 1.0}
    reply = chat(http, regex=pattern, max_tokens=64, **extra)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert re.fullmatch(pattern, choice["message"]["content"]), choice
    assert choice["finish_reason"] == "stop"


def test_ebnf_output_is_a_sentence_of_the_grammar(http: httpx.Client) -> None:
    grammar = 'root ::= "The answer is " digit digit "."\ndigit ::= [0-9]'
    texts = set()
    for seed in range(6):
        reply = chat(http, ebnf=grammar, temperature=1.0, seed=seed)
        assert reply.status_code == 200, reply.text
        texts.add(reply.json()["choices"][0]["message"]["content"])
    assert all(re.fullmatch(r"The answer is \d\d\.", text) for text in texts), texts


def test_completions_regex_and_json_schema(http: httpx.Client) -> None:
    reply = complete(http, regex=r"[0-9]{4}", max_tokens=16)
    assert reply.status_code == 200, reply.text
    assert re.fullmatch(r"[0-9]{4}", reply.json()["choices"][0]["text"])
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5}}, "required": ["n"]}
    reply = complete(http, json_schema=json.dumps(schema), max_tokens=64, temperature=1.0, seed=4)
    assert reply.status_code == 200, reply.text
    value = json.loads(reply.json()["choices"][0]["text"])
    assert isinstance(value["n"], int)
    assert value["n"] >= 5


@pytest.mark.parametrize("seed", [None, 7, 8, 9])
def test_json_schema_output_validates(http: httpx.Client, seed: int | None) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3},
        },
        "required": ["city", "days", "unit", "tags"],
        "additionalProperties": False,
    }
    extra = {} if seed is None else {"seed": seed, "temperature": 1.0}
    reply = chat(
        http,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
        max_tokens=200,
        **extra,
    )
    assert reply.status_code == 200, reply.text
    value = json.loads(reply.json()["choices"][0]["message"]["content"])
    assert set(value) == {"city", "days", "unit", "tags"}
    assert isinstance(value["city"], str)
    assert len(value["city"]) <= 12
    assert 1 <= value["days"] <= 7
    assert value["unit"] in {"celsius", "fahrenheit"}
    assert 2 <= len(value["tags"]) <= 3


def test_streamed_regex_output_matches(http: httpx.Client) -> None:
    body = {"model": "standin-model", "messages": USER, "regex": r"\d{3}-\d{4}", "stream": True}
    text = ""
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
    assert re.fullmatch(r"\d{3}-\d{4}", text), text


@pytest.mark.parametrize(
    ("body", "wording"),
    [
        (
            {"regex": r"\d+", "ebnf": 'root ::= "1"'},
            "Only one of json_schema, regex, ebnf, or structural_tag can be set.",
        ),
        (
            {"regex": r"\d+", "response_format": {"type": "json_object"}},
            "Only one of json_schema, regex, ebnf, or structural_tag can be set.",
        ),
        ({"regex": "("}, "Failed to compile regex grammar"),
        ({"ebnf": 'root ::= "unclosed'}, "Failed to compile ebnf grammar"),
    ],
)
def test_bad_constraints_are_400(http: httpx.Client, body: dict[str, Any], wording: str) -> None:
    reply = chat(http, **body)
    assert reply.status_code == 400
    assert wording in reply.json()["message"]


def test_stop_regex_cuts_the_output(http: httpx.Client) -> None:
    reply = chat(http, stop_regex=r"deterministic\s")
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["message"]["content"].endswith("This is a ")
    assert choice["matched_stop"] == r"deterministic\s"


def test_the_constraint_applies_after_the_thinking_section(standins: StandinFactory) -> None:
    server = standins.launch("--reasoning-parser", "qwen3")
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as client:
        reply = chat(client, regex=r"[0-9]{3}")
        assert reply.status_code == 200, reply.text
        message = reply.json()["choices"][0]["message"]
        assert message["reasoning_content"].startswith("The user wrote 3 words.")
        assert re.fullmatch(r"[0-9]{3}", message["content"])
        usage = reply.json()["usage"]
        assert 0 < usage["reasoning_tokens"] < usage["completion_tokens"]
