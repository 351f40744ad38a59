"""Constrained decoding for the stand-in: llguidance masks, the stand-in "model" scores.

SGLang's grammar backends (xgrammar, outlines, llguidance) compile ``regex``, ``ebnf``
and ``json_schema`` into a token mask that the sampler applies at every step.  This
does the same with llguidance (one of SGLang's backends; a dependency-free wheel,
unlike xgrammar which pulls in torch) over a fixed decoding vocabulary: all 256 bytes
plus common stand-in pieces (words and punctuation with their leading whitespace), so
any text a grammar allows can be spelled.  The output is valid by construction.

The "model" behind the mask prefers a *target* text (the stand-in's usual reply, or an
example JSON document) whenever the grammar allows its next piece, gives a few
deterministic alternatives a small share of probability (so temperature and seed
matter), and once the target is exhausted prefers ending (EOS when the grammar
accepts), closing brackets and long tokens, so random walks terminate.

Decoding works on the llguidance tokens; the caller then re-splits the text with the
stand-in tokenizer (so usage matches ``/tokenize``) and :func:`piece_logprobs` sums the
log-probabilities of the decoding tokens that make up each stand-in piece (the chain
rule: the probability of the piece given the context).
"""

from __future__ import annotations

import codecs
import json
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import llguidance

from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._sampling import SamplingParams, TokenLogprob, sample

__all__ = [
    "Decoded",
    "GrammarError",
    "compile_grammar",
    "decode",
    "literal_grammar",
    "piece_logprobs",
]

GrammarKind = Literal["regex", "ebnf", "json_schema", "lark"]

_WORDS = (
    "You said The tool returned This is a deterministic reply from the SGLang stand in "
    "nothing true false null name value ok response yes no hello world user example com "
    "the a an and of to is it I will answer wrote words"
)
_ALTERNATIVES = 4
_Top = tuple[tuple[int, str, float], ...]
_WORD = re.compile(r" ?\w+")
_WORD_BYTES = re.compile(rb" ?\w+")
_BITS = tuple(tuple(bit for bit in range(8) if byte >> bit & 1) for byte in range(256))
_DROPPED = -30.0  # score of tokens the model does not consider (tiny but non-zero mass)


class GrammarError(ValueError):
    """The constraint does not compile (SGLang answers 400 "Invalid grammar request")."""


@dataclass(frozen=True)
class _Vocab:
    tokens: tuple[bytes, ...]
    texts: tuple[str, ...]
    eos: int
    llg: llguidance.LLTokenizer


class _Wrapper:
    """What ``llguidance.TokenizerWrapper`` needs from a tokenizer."""

    def __init__(self, tokens: Sequence[bytes], eos: int) -> None:
        self.tokens = list(tokens)
        self.eos_token_id = eos
        self.bos_token_id = None
        self.special_token_ids = [eos]

    def __call__(self, text: bytes) -> list[int]:
        # bytes 0..255 are the first 256 tokens, so byte-wise encoding is always valid
        return list(text)


@lru_cache(maxsize=1)
def _vocab() -> _Vocab:
    pieces: list[bytes] = [bytes([i]) for i in range(256)]
    seen = set(pieces)
    extra: list[str] = []
    for prefix in ("", " ", "\n"):
        extra.extend(prefix + word for word in _WORDS.split())
    for prefix in (" ", "\n", "\n  ", "\n    "):
        extra.extend(prefix + mark for mark in string.punctuation)
    extra.extend(str(number) for number in range(10, 100))
    for text in extra:
        raw = text.encode()
        if raw not in seen:
            seen.add(raw)
            pieces.append(raw)
    eos = len(pieces)
    pieces.append(tok.EOS_TEXT.encode())
    wrapper = llguidance.TokenizerWrapper(_Wrapper(pieces, eos))
    texts = (*(p.decode("utf-8", errors="ignore") for p in pieces[:eos]), "")
    return _Vocab(tuple(pieces), texts, eos, llguidance.LLTokenizer(wrapper))


def compile_grammar(kind: GrammarKind, text: str) -> str:
    """Compile a ``regex``/``ebnf`` (GBNF or Lark)/``json_schema``/``lark`` constraint.

    Raises :class:`GrammarError` with llguidance's message when it does not compile.
    """
    try:
        if kind == "json_schema":
            # flexible whitespace, as SGLang's llguidance backend compiles schemas; keywords
            # a grammar cannot enforce (uniqueItems, ...) are ignored, as xgrammar does
            grammar = llguidance.LLMatcher.grammar_from_json_schema(text, defaults={"lenient": True})
        elif kind == "ebnf":
            grammar = llguidance.grammar_from("ebnf", text)
        elif kind == "lark":
            grammar = llguidance.LLMatcher.grammar_from_lark(text)
        else:
            grammar = llguidance.LLMatcher.grammar_from_regex(text)
    except (ValueError, TypeError) as exc:
        raise GrammarError(str(exc)) from exc
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, _vocab().llg)
    if is_error:
        raise GrammarError(messages[0].strip() if messages else "invalid grammar")
    return grammar


def literal_grammar(*alternatives: str) -> str:
    """A grammar that allows exactly one of *alternatives* (free text with sampled variants)."""
    body = " | ".join(json.dumps(text) for text in alternatives)
    return llguidance.LLMatcher.grammar_from_lark(f"start: {body}")


@dataclass
class Decoded:
    """Decoded text, the decoding tokens' log-probabilities, and whether EOS was chosen."""

    text: str
    steps: list[tuple[int, TokenLogprob]]  # (character offset, entry)
    finished: bool


def decode(
    grammar: str,
    target: str,
    params: SamplingParams,
    rng: random.Random,
    *,
    max_steps: int,
    top_logprobs: int = 0,
) -> Decoded:
    """Sample up to *max_steps* tokens allowed by *grammar*, preferring *target*.

    Tokens are bytes (a character outside ASCII may take several); the text is their
    incremental UTF-8 decoding.
    """
    vocab = _vocab()
    matcher = llguidance.LLMatcher(vocab.llg, grammar, log_level=0)
    if matcher.is_error():
        raise GrammarError(matcher.get_error())
    wanted = target.encode()
    state = _Progress(codecs.getincrementaldecoder("utf-8")(errors="replace"))
    step = 0
    while step < max_steps:
        forced = matcher.compute_ff_bytes()
        if forced:
            # text the grammar leaves no choice about: said with certainty, longest tokens first
            for token in _spell(vocab, forced):
                if step >= max_steps or not matcher.consume_token(token):
                    break
                entry = state.say(vocab, token, wanted, 0.0, ((token, vocab.texts[token], 0.0),))
                state.steps.append(entry)
                step += 1
            if matcher.is_error():
                raise GrammarError(matcher.get_error())
            if matcher.is_stopped():
                return state.done(True)
            continue
        step += 1
        mask = matcher.compute_bitmask()
        allowed = [8 * i + bit for i, byte in enumerate(mask) if byte for bit in _BITS[byte]]
        allowed = [t for t in allowed if t < len(vocab.tokens)]
        if not allowed:
            return state.done(True)
        scores = _scores(vocab, allowed, wanted[state.position :], state.text, step)
        index, logprobs = sample(scores, params, rng)
        token = allowed[index]
        top: tuple[tuple[int, str, float], ...] = ()
        if top_logprobs:
            best = sorted(range(len(allowed)), key=lambda i: (-logprobs[i], i))[:top_logprobs]
            top = tuple((allowed[i], vocab.texts[allowed[i]], logprobs[i]) for i in best)
        if token == vocab.eos:
            state.steps.append((len(state.text), TokenLogprob(token, "", logprobs[index], top)))
            return state.done(True)
        if not matcher.consume_token(token):
            raise GrammarError(matcher.get_error())
        state.steps.append(state.say(vocab, token, wanted, logprobs[index], top))
        if matcher.is_stopped():
            return state.done(True)
    return state.done(False)


@dataclass
class _Progress:
    """Decoding so far: text, steps and how much of the target (in bytes) has been said."""

    decoder: codecs.IncrementalDecoder
    text: str = ""
    position: int = 0
    steps: list[tuple[int, TokenLogprob]] = field(default_factory=list)

    def say(
        self, vocab: _Vocab, token: int, wanted: bytes, logprob: float, top: _Top
    ) -> tuple[int, TokenLogprob]:
        """Append *token*; return its (character offset, entry)."""
        raw = vocab.tokens[token]
        offset = len(self.text)
        piece = self.decoder.decode(raw)
        self.text += piece
        if wanted.startswith(raw, self.position):
            self.position += len(raw)
        elif _WORD.match(piece):
            # another word instead of the target's next one: carry on after that word
            word = _WORD_BYTES.match(wanted, self.position)
            self.position = word.end() if word else self.position
        return offset, TokenLogprob(token, piece, logprob, top)

    def done(self, finished: bool) -> Decoded:
        """Flush the decoder and return the result."""
        self.text += self.decoder.decode(b"", final=True)
        return Decoded(self.text, self.steps, finished)


def _spell(vocab: _Vocab, data: bytes) -> list[int]:
    """Tokens spelling *data*: longest vocabulary tokens over its UTF-8 prefix, then bytes."""
    try:
        return list(vocab.llg.greedy_tokenize(data.decode("utf-8")))
    except UnicodeDecodeError as exc:
        head = list(vocab.llg.greedy_tokenize(data[: exc.start].decode("utf-8")))
        return head + list(data[exc.start :])  # bytes 0..255 are tokens 0..255


def _scores(vocab: _Vocab, allowed: list[int], rest: bytes, text: str, step: int) -> list[float]:
    """The stand-in model's scores over *allowed* tokens given what remains of the target."""
    scores = [_DROPPED] * len(allowed)
    slot = {token: i for i, token in enumerate(allowed)}
    preferred = _longest_prefix(vocab, slot, rest) if rest else None
    salt = (len(text) * 40503 + step * 2654435761 + sum(map(ord, text[-8:]))) & 0xFFFFFFFF
    # a model rarely breaks lines or pads JSON on a whim: no such alternatives
    spoken = [t for t in allowed if t == vocab.eos or _plain(vocab.texts[t])]
    if preferred is not None:
        spoken = [t for t in spoken if _WORD.match(vocab.texts[t])]
    alternatives = sorted(spoken, key=lambda t: (t * 2246822519 + salt) & 0xFFFFFFFF)[:_ALTERNATIVES]
    if preferred is not None:
        scores[slot[preferred]] = 0.0
        if _WORD_BYTES.match(rest):
            # the model hesitates over words and numbers, never over syntax
            for rank, token in enumerate(alternatives):
                if token != preferred:
                    scores[slot[token]] = -2.0 - rank
        return scores
    # target exhausted or off the grammar: end if allowed, else structure (punctuation)
    # before content, so that random walks through a grammar terminate
    for rank, token in enumerate(alternatives):
        scores[slot[token]] = -3.0 - rank
    marks = [t for t in allowed if t < 128 and chr(t) in string.punctuation]
    for rank, token in enumerate(sorted(marks, key=lambda t: (t * 2246822519 + salt) & 0xFFFFFFFF)):
        scores[slot[token]] = -1.5 - 0.5 * rank
    for mark in ('"', "}", "]", ")"):
        closer = slot.get(ord(mark))
        if closer is not None:
            scores[closer] = 0.0
    if vocab.eos in slot:
        scores[slot[vocab.eos]] = 0.0
    return scores


def _plain(text: str) -> bool:
    """Text that is not whitespace-only and starts with at most one space."""
    return bool(text.strip()) and not text.startswith(("\n", "\t", "\r", "  "))


def _longest_prefix(vocab: _Vocab, slot: dict[int, int], rest: bytes) -> int | None:
    """The longest allowed token that spells the start of *rest* (None if none does)."""
    best: int | None = None
    best_len = 0
    for token in slot:
        raw = vocab.tokens[token]
        if token != vocab.eos and len(raw) > best_len and rest.startswith(raw):
            best, best_len = token, len(raw)
    return best


def piece_logprobs(decoded: Decoded, pieces: Sequence[str]) -> list[TokenLogprob]:
    """One entry per stand-in piece: summed log-probabilities of the tokens inside it.

    Alternatives (``top``) are those of the piece's first decoding token; ids are the
    stand-in tokenizer's.
    """
    out: list[TokenLogprob] = []
    eos = _vocab().eos  # a byte of a longer character has no text of its own but counts
    steps = [(offset, entry) for offset, entry in decoded.steps if entry.token_id != eos]
    cursor = 0
    start = 0
    for piece in pieces:
        end = start + len(piece)
        total = 0.0
        first: TokenLogprob | None = None
        while cursor < len(steps) and steps[cursor][0] < end:
            entry = steps[cursor][1]
            first = first or entry
            total += entry.logprob
            cursor += 1
        ids = tok.encode(piece)
        top = tuple((tok.encode(t)[0] if t else tok.EOS_ID, t, lp) for _, t, lp in first.top) if first else ()
        out.append(TokenLogprob(ids[0] if ids else tok.EOS_ID, piece, total, top))
        start = end
    return out
