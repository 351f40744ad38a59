"""Request checks shared by the generation routes, in SGLang's wording.

``SamplingParams.verify`` for the values clients get wrong, and the TokenizerManager's
context-length checks (the same text on the OpenAI and the native routes).
"""

from __future__ import annotations

from sglang_backend.testing._replies import BadRequest

__all__ = ["check_context", "check_sampling"]


def check_sampling(temperature: float | None, top_p: float | None, max_new: int | None) -> None:
    """SGLang's SamplingParams.verify wording for the values a client gets wrong."""
    if temperature is not None and temperature < 0:
        raise BadRequest(f"temperature must be non-negative, got {temperature}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise BadRequest(f"top_p must be in (0, 1], got {top_p}.")
    if max_new is not None and max_new < 0:
        raise BadRequest(f"max_new_tokens must be at least 0, got {max_new}.")


def check_context(prompt_tokens: int, max_new: int | None, context_len: int) -> None:
    """SGLang's TokenizerManager context-length checks (real wording)."""
    if prompt_tokens >= context_len:
        raise BadRequest(
            f"The input ({prompt_tokens} tokens) is longer than the model's context length "
            f"({context_len} tokens)."
        )
    if max_new is not None and max_new + prompt_tokens >= context_len:
        raise BadRequest(
            "Requested token count exceeds the model's maximum context length "
            f"of {context_len} tokens. You requested a total of {max_new + prompt_tokens} "
            f"tokens: {prompt_tokens} tokens from the input messages and "
            f"{max_new} tokens for the completion. Please reduce the number of tokens in the "
            "input messages or the completion to fit within the limit."
        )
