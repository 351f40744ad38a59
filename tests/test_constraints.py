"""Output constraints are checked before any I/O: one constraint at a time, patterns that compile."""

from __future__ import annotations

import pytest

from sglang_backend._requests import check_constraints, check_regex
from sglang_backend.config import SGLangConfig
from sglang_backend.errors import ConfigError, InvalidRequestError

JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


@pytest.mark.parametrize("field", ["regex", "stop_regex"])
def test_config_rejects_a_malformed_pattern(field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        SGLangConfig(**{field: "(unclosed"})
    assert "not a valid regular expression" in str(info.value)


def test_config_rejects_a_malformed_pattern_in_a_stop_regex_list() -> None:
    with pytest.raises(ConfigError, match=r"stop_regex\[1\]"):
        SGLangConfig(stop_regex=[r"\d+", "[z-a]"])


def test_config_accepts_good_patterns() -> None:
    config = SGLangConfig(regex=r"\d{3}-\d{4}", stop_regex=[r"\n\n", r"END\b"])
    assert config.request_kwargs()[1] == {"regex": r"\d{3}-\d{4}", "stop_regex": [r"\n\n", r"END\b"]}


@pytest.mark.parametrize(
    ("response_format", "regex", "ebnf", "named"),
    [
        (JSON_FORMAT, r"\d+", None, "response_format, regex"),
        ({"type": "json_object"}, None, 'root ::= "a"', "response_format, ebnf"),
        (None, r"\d+", 'root ::= "a"', "regex, ebnf"),
    ],
)
def test_two_constraints_are_rejected(
    response_format: dict[str, object] | None, regex: str | None, ebnf: str | None, named: str
) -> None:
    with pytest.raises(InvalidRequestError, match=f"only one of {named} may be set"):
        check_constraints(response_format, regex, ebnf)


@pytest.mark.parametrize(
    ("response_format", "regex", "ebnf"),
    [
        (JSON_FORMAT, None, None),
        ({"type": "text"}, r"\d+", None),
        (None, None, 'root ::= "a"'),
        (None, None, None),
    ],
)
def test_one_constraint_is_fine(
    response_format: dict[str, object] | None, regex: str | None, ebnf: str | None
) -> None:
    check_constraints(response_format, regex, ebnf)


def test_check_regex_names_the_field_and_the_reason() -> None:
    with pytest.raises(InvalidRequestError, match=r"regex is not a valid regular expression: missing \)"):
        check_regex("(a", "regex")
    with pytest.raises(InvalidRequestError, match="must be a string"):
        check_regex([1], "stop_regex")


def test_the_model_refuses_a_per_call_response_format_over_a_configured_regex() -> None:
    from sglang_backend import AsyncSGLangModel, SGLangModel

    messages = [{"role": "user", "content": "x"}]
    for model in (AsyncSGLangModel("m", {"regex": "[a-z]+"}), SGLangModel("m", {"regex": "[a-z]+"})):
        with pytest.raises(InvalidRequestError, match="only one of response_format, regex"):
            model.chat_request(messages, {"type": "json_object"})  # before any I/O
