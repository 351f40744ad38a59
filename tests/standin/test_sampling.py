"""Seeded sampling and logprobs in the stand-in: deterministic per seed, varied across seeds and n."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest

from sglang_backend._http import httpx
from sglang_backend.testing._sampling import SamplingParams, choice_rng, log_softmax, sample
from tests.standin.conftest import Standin

USER = [{"role": "user", "content": "Tell me a number."}]


@pytest.fixture
def http(shared: Standin) -> Iterator[httpx.Client]:
    """A plain HTTP client for the shared stand-in."""
    with httpx.Client(base_url=shared.base_url, headers=shared.headers, timeout=30) as client:
        yield client


def chat(http: httpx.Client, **body: Any) -> dict[str, Any]:
    reply = http.post("/v1/chat/completions", json={"model": "standin-model", "messages": USER, **body})
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def texts(body: dict[str, Any]) -> list[str]:
    return [choice["message"]["content"] for choice in body["choices"]]


def test_same_seed_same_text_other_seeds_other_texts(http: httpx.Client) -> None:
    first = texts(chat(http, regex=r"[0-9]{8}", temperature=1.0, seed=11))
    again = texts(chat(http, regex=r"[0-9]{8}", temperature=1.0, seed=11))
    assert first == again
    others = {texts(chat(http, regex=r"[0-9]{8}", temperature=1.0, seed=seed))[0] for seed in range(8)}
    assert len(others) > 1


def test_n_choices_differ_and_repeat_with_the_seed(http: httpx.Client) -> None:
    body = chat(http, regex=r"[0-9]{8}", n=4, seed=3)
    choices = texts(body)
    assert len(set(choices)) > 1
    assert texts(chat(http, regex=r"[0-9]{8}", n=4, seed=3)) == choices
    assert body["usage"]["completion_tokens"] == sum(1 + 1 for _ in choices)  # one piece + EOS each


def test_free_text_keeps_its_echo_and_samples_the_ending(http: httpx.Client) -> None:
    replies = [texts(chat(http, temperature=1.0, seed=seed))[0] for seed in range(30)]
    assert all(reply.startswith("You said: Tell me a number.") for reply in replies)
    assert len(set(replies)) > 1
    greedy = {texts(chat(http, temperature=0))[0] for _ in range(2)}
    assert greedy == {"You said: Tell me a number. This is a deterministic reply from the SGLang stand-in."}


def test_chat_logprobs_follow_the_tokens(http: httpx.Client) -> None:
    body = chat(http, logprobs=True, top_logprobs=3, temperature=0.7, seed=1)
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(entry["token"] for entry in content) == choice["message"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] - 1  # EOS has no text
    for entry in content:
        assert entry["logprob"] <= 0
        assert entry["bytes"] == list(entry["token"].encode())
        tops = [top["logprob"] for top in entry["top_logprobs"]]
        assert 1 <= len(tops) <= 3  # the grammar masks the rest of the vocabulary
        assert tops == sorted(tops, reverse=True)
    assert texts(chat(http, temperature=0.7, seed=1)) == [choice["message"]["content"]]


def test_chat_without_logprobs_has_none(http: httpx.Client) -> None:
    assert chat(http)["choices"][0]["logprobs"] is None


def test_streamed_chat_logprobs_match_each_delta(http: httpx.Client) -> None:
    body = {"model": "standin-model", "messages": USER, "stream": True, "logprobs": True, "top_logprobs": 1}
    seen = 0
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                delta = choice["delta"].get("content")
                if delta:
                    entries = choice["logprobs"]["content"]
                    assert "".join(entry["token"] for entry in entries) == delta
                    seen += 1
    assert seen > 5


def test_completion_logprobs(http: httpx.Client) -> None:
    reply = http.post(
        "/v1/completions",
        json={"model": "standin-model", "prompt": "Hello there", "logprobs": 2, "max_tokens": 8, "seed": 2},
    )
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["text_offset"]) == 8
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])


def test_sampler_filters_and_reports_logprobs() -> None:
    scores = [0.0, -1.0, -2.0, -8.0]
    logprobs = log_softmax(scores)
    assert math.isclose(sum(math.exp(lp) for lp in logprobs), 1.0)
    rng = random.Random(0)
    assert {sample(scores, SamplingParams(temperature=5.0, top_k=1), rng)[0] for _ in range(50)} == {0}
    assert {sample(scores, SamplingParams(temperature=1.0, top_p=0.1), rng)[0] for _ in range(50)} == {0}
    assert {sample(scores, SamplingParams(temperature=1.0, min_p=0.3), rng)[0] for _ in range(200)} == {0, 1}
    assert sample(scores, SamplingParams(), rng)[0] == 0
    drawn = {sample(scores, SamplingParams(temperature=2.0), rng)[0] for _ in range(300)}
    assert drawn >= {0, 1, 2}
    a = [choice_rng(9, 0).random() for _ in range(3)]
    assert a == [choice_rng(9, 0).random() for _ in range(3)]
    assert a != [choice_rng(9, 1).random() for _ in range(3)]


def test_text_outside_ascii_survives_sampling(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "Grüße aus Köln 😀 中文"}]
    for seed in range(3):
        body = chat(http, messages=messages, temperature=1.0, seed=seed, logprobs=True)
        choice = body["choices"][0]
        assert choice["message"]["content"].startswith("You said: Grüße aus Köln 😀 中文.")
        entries = choice["logprobs"]["content"]
        assert "".join(entry["token"] for entry in entries) == choice["message"]["content"]
        assert all(entry["logprob"] <= 0 for entry in entries)
