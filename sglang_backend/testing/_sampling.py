"""Deterministic seeded sampling and the logprob shapes SGLang returns.

The stand-in's "model" scores candidate tokens (see ``_grammar``); this module turns
scores into a choice the way a sampler does (temperature, top-k, top-p, min-p) with a
per-choice RNG derived from ``seed``, and renders the log-probabilities of the tokens it
chose in the three wire shapes: chat (``choices[].logprobs.content``), text
completions (``tokens``/``token_logprobs``/``top_logprobs``/``text_offset``) and native
``/generate`` (``meta_info.output_token_logprobs`` as ``[logprob, id, text]``).
"""

from __future__ import annotations

import hashlib
import math
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SamplingParams",
    "TokenLogprob",
    "chat_logprobs",
    "choice_rng",
    "completion_logprobs",
    "log_softmax",
    "native_logprobs",
    "sample",
]


@dataclass(frozen=True)
class SamplingParams:
    """The sampling knobs of one request; ``temperature`` 0 (or None) means greedy."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """True when the argmax is taken (SGLang treats temperature below 1e-5 as greedy)."""
        return self.temperature is None or self.temperature < 1e-5


@dataclass(frozen=True)
class TokenLogprob:
    """One chosen token: its id, text, log-probability and the best alternatives."""

    token_id: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = field(default=())


def choice_rng(seed: int | None, index: int) -> random.Random:
    """The RNG of choice *index*: a function of ``(seed, index)``, fresh entropy if unseeded.

    Same seed and index give the same stream in every process (BLAKE2b, not ``hash``);
    different indices (``n > 1``) give different streams.
    """
    if seed is None:
        return random.Random(secrets.randbits(64))
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def log_softmax(scores: Sequence[float], temperature: float = 1.0) -> list[float]:
    """Log-probabilities of *scores* divided by *temperature* (numerically stable)."""
    if not scores:
        return []
    scaled = [s / temperature for s in scores]
    top = max(scaled)
    total = math.log(sum(math.exp(s - top) for s in scaled))
    return [s - top - total for s in scaled]


def sample(scores: Sequence[float], params: SamplingParams, rng: random.Random) -> tuple[int, list[float]]:
    """Pick an index into *scores*; return it and the log-probabilities it was drawn from.

    Greedy takes the first maximum.  Otherwise temperature scales the scores, then
    top-k, min-p and top-p (nucleus) filter the distribution before one draw from *rng*.
    The returned log-probabilities are those of the temperature-scaled distribution
    before filtering (temperature 1 when greedy), as SGLang reports them.
    """
    if not scores:
        raise ValueError("nothing to sample from")
    temperature = 1.0 if params.greedy else float(params.temperature or 1.0)
    logprobs = log_softmax(scores, temperature)
    if params.greedy:
        return max(range(len(scores)), key=lambda i: (scores[i], -i)), logprobs
    order = sorted(range(len(scores)), key=lambda i: (-logprobs[i], i))
    if params.top_k is not None and params.top_k > 0:
        order = order[: params.top_k]
    if params.min_p is not None and params.min_p > 0:
        floor = logprobs[order[0]] + math.log(params.min_p)
        order = [i for i in order if logprobs[i] >= floor]
    if params.top_p is not None and params.top_p < 1.0:
        kept: list[int] = []
        mass = 0.0
        for i in order:
            kept.append(i)
            mass += math.exp(logprobs[i])
            if mass >= params.top_p:
                break
        order = kept
    weights = [math.exp(logprobs[i]) for i in order]
    return rng.choices(order, weights=weights, k=1)[0], logprobs


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(entries: Sequence[TokenLogprob], top_logprobs: int | None) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion (OpenAI ``ChoiceLogprobs``)."""
    count = top_logprobs or 0
    return {
        "content": [
            {
                "token": entry.text,
                "bytes": _bytes(entry.text),
                "logprob": entry.logprob,
                "top_logprobs": [
                    {"token": text, "bytes": _bytes(text), "logprob": logprob}
                    for _, text, logprob in entry.top[:count]
                ],
            }
            for entry in entries
        ]
    }


def completion_logprobs(
    entries: Sequence[TokenLogprob], top_logprobs: int, start_offset: int = 0
) -> dict[str, Any]:
    """``choices[].logprobs`` of a text completion (``logprobs=N`` asks for N alternatives)."""
    offsets: list[int] = []
    position = start_offset
    for entry in entries:
        offsets.append(position)
        position += len(entry.text)
    return {
        "text_offset": offsets,
        "token_logprobs": [entry.logprob for entry in entries],
        "tokens": [entry.text for entry in entries],
        "top_logprobs": [
            {text: logprob for _, text, logprob in entry.top[:top_logprobs]} for entry in entries
        ],
    }


def native_logprobs(
    entries: Sequence[TokenLogprob], top_logprobs: int = 0, *, with_text: bool = False
) -> dict[str, Any]:
    """``meta_info`` logprob fields of ``/generate`` (``[logprob, token_id, text|None]`` triples)."""

    def triple(token_id: int, text: str, logprob: float) -> list[Any]:
        return [logprob, token_id, text if with_text else None]

    return {
        "output_token_logprobs": [triple(e.token_id, e.text, e.logprob) for e in entries],
        "output_top_logprobs": [
            [triple(token_id, text, logprob) for token_id, text, logprob in e.top[:top_logprobs]]
            for e in entries
        ]
        if top_logprobs
        else [],
    }
