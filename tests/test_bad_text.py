"""Text that cannot be encoded (lone surrogates) fails as InvalidRequestError before any I/O."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sglang_backend import AsyncSGLangModel, InvalidRequestError, ServerConfig

from .conftest import MODEL, read_events

BAD = "caf\udce9"  # what bytes.decode("utf-8", "surrogateescape") makes of Latin-1 input
OK = [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize(
    "call",
    [
        {"messages": [{"role": "user", "content": BAD}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": BAD}]}]},
        {"messages": [{"role": "user", "content": "hi", "name": BAD}]},
        {"messages": OK, "tools": [{"type": "function", "function": {"name": "f", "description": BAD}}]},
        {"messages": OK, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", BAD: 1}}}},
    ],
    ids=["content", "text-part", "name", "tool", "response_format"],
)
async def test_unencodable_text_is_rejected_before_launch(
    standin: Callable[..., ServerConfig], events_file: Path, call: dict[str, Any]
) -> None:
    model = AsyncSGLangModel(MODEL, server=standin())
    try:
        with pytest.raises(InvalidRequestError, match="cannot be encoded as UTF-8"):
            await model.run(**call)
        assert read_events(events_file) == []  # the stand-in never started
        assert model.server is None or model.server.launches == 0
    finally:
        await model.aclose()


def test_the_error_names_the_place_and_the_character() -> None:
    from sglang_backend._requests import check_messages

    with pytest.raises(InvalidRequestError) as info:
        check_messages([{"role": "user", "content": "ok"}, {"role": "user", "content": BAD}])
    assert "messages[1]['content']" in str(info.value)
    assert "'\\udce9' at index 3" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_valid_non_ascii_text_passes() -> None:
    from sglang_backend._requests import check_messages

    assert check_messages([{"role": "user", "content": "café 日本 🙂"}])
