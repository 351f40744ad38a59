"""SGLang's own tool-call parsers judge the stand-in's tool calls, format by format.

For every ``--tool-call-parser`` the stand-in has a format for, SGLang 0.5.23's
``FunctionCallParser`` reads the stand-in's raw text — ``parse_non_stream`` on the whole
and ``parse_stream_chunk`` token piece by token piece — and must extract exactly the calls
(names, arguments, leftover text) the stand-in reports, streamed and not. The raw text
comes from the formats directly and, end to end, from a running stand-in's answer: its
chat ``logprobs`` list every generated token, tool-call markup included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sglang.srt.entrypoints.openai.protocol import Tool
from sglang.srt.function_call.function_call_parser import FunctionCallParser
from sglang.srt.function_call.parser_names import TOOL_CALL_PARSER_NAMES

from sglang_backend._http import httpx
from sglang_backend.testing import _tokenizer as tok
from sglang_backend.testing._engine import PlannedCall, StreamSplitter
from sglang_backend.testing._tool_formats import FORMATS, PARSER_NAMES, render
from tests.standin.conftest import Standin, StandinFactory

PARSERS = [name for name in FORMATS if name != "auto"]
# formats whose streamed deltas SGLang's parser splits exactly where the stand-in does
EXACT_STREAM = {"mistral", "deepseekv3", "pythonic", "kimi_k2", "gpt-oss"}


def tool(name: str, **properties: Any) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


TOOLS = [
    tool("get_weather", city={"type": "string"}, unit={"type": "string", "enum": ["C", "F"]}),
    tool("get_time", zone={"type": "string"}),
    tool("add", a={"type": "integer"}, b={"type": "number"}),
    tool("search", query={"type": "string"},
         filters={"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}}),
    tool("ping"),
]  # fmt: skip
SGLANG_TOOLS = [Tool.model_validate(t) for t in TOOLS]

CALL_SETS: dict[str, list[PlannedCall]] = {
    "one": [PlannedCall("get_weather", '{"city": "Paris", "unit": "C"}')],
    "three": [PlannedCall("get_weather", '{"city":"Zürich","unit":"F"}'),
              PlannedCall("get_time", '{"zone": "UTC"}'), PlannedCall("add", '{"a": -3, "b": 2.5}')],
    "nested": [PlannedCall("search", '{"query": "a \\"quoted\\" [word]", "filters": {"tags": ["x", "y z"]}}'),
               PlannedCall("ping", "{}")],
}  # fmt: skip


def sglang_parse(parser: str, text: str) -> tuple[str, list[tuple[str, str]]]:
    """What SGLang's non-streaming parse extracts: (normal text, [(name, arguments)])."""
    normal, items = FunctionCallParser(SGLANG_TOOLS, parser).parse_non_stream(text)
    return normal, [(str(item.name), item.parameters) for item in items]


def sglang_stream(parser: str, pieces: Sequence[str]) -> tuple[str, list[tuple[int, str | None, str]]]:
    """SGLang's streaming parse of *pieces*: (normal text, [(index, name, arguments delta)])."""
    fcp = FunctionCallParser(SGLANG_TOOLS, parser)
    normal = ""
    items: list[tuple[int, str | None, str]] = []
    for piece in pieces:
        text, calls = fcp.parse_stream_chunk(piece)
        normal += text
        items += [(c.tool_index, c.name, c.parameters) for c in calls]
    text, calls = fcp.parse_stream_end()
    return normal + text, items + [(c.tool_index, c.name, c.parameters) for c in calls]


def standin_stream(
    parser: str, calls: Sequence[PlannedCall], pieces: Sequence[str]
) -> list[tuple[int, str | None, str]]:
    """The deltas the stand-in's chat stream sends for *pieces* (as ``_app`` shapes them)."""
    rendered = render(parser, calls)
    splitter = StreamSplitter(separate_reasoning=False, reasoning=False, calls=calls, rendered=rendered)
    out: list[tuple[int, str | None, str]] = []
    raw = ""
    for step, piece in enumerate(pieces):
        raw += piece
        for index, name, delta in splitter.feed(raw, final=step == len(pieces) - 1)[2]:
            if name is not None and rendered.with_name:
                out.append((index, name, delta))
                continue
            if name is not None:
                out.append((index, name, ""))
            if delta:
                out.append((index, None, delta))
    return out


def joined(items: Sequence[tuple[int, str | None, str]]) -> dict[int, tuple[str | None, str]]:
    """Per call index: the name and the concatenated arguments."""
    calls: dict[int, tuple[str | None, str]] = {}
    for index, name, delta in items:
        old_name, old_args = calls.get(index, (None, ""))
        calls[index] = (old_name or name, old_args + delta)
    return calls


def test_the_standins_parser_names_are_sglangs() -> None:
    assert list(PARSER_NAMES) == list(TOOL_CALL_PARSER_NAMES)
    assert set(PARSER_NAMES) == set(FunctionCallParser.ToolCallParserEnum)
    assert set(PARSERS) <= set(PARSER_NAMES)


@pytest.mark.parametrize("calls", CALL_SETS.values(), ids=list(CALL_SETS))
@pytest.mark.parametrize("parser", PARSERS)
def test_sglang_parses_each_format_to_the_standins_calls(parser: str, calls: list[PlannedCall]) -> None:
    rendered = render(parser, calls)
    for args, call in zip(rendered.arguments, calls, strict=True):
        assert json.loads(args) == json.loads(call.arguments)
    kept = {i: (c.name, a) for i, (c, a) in enumerate(zip(calls, rendered.arguments, strict=True))
            if i not in rendered.dropped}  # fmt: skip
    normal, parsed = sglang_parse(parser, rendered.text)
    assert parsed == list(kept.values())
    assert normal == ""
    pieces = tok.split(rendered.text)
    assert "".join(pieces) == rendered.text
    streamed_text, streamed = sglang_stream(parser, pieces)
    assert streamed_text == ""
    ours = standin_stream(parser, calls, pieces)
    assert joined(streamed) == joined(ours) == kept  # streamed under their positions in the text
    if parser in EXACT_STREAM:
        assert streamed == ours
    for items in (streamed, ours):  # each call's name comes first, once
        names = [(i, n) for i, n, _ in items if n is not None]
        assert names == [(i, name) for i, (name, _) in kept.items()]


def test_pythonic_negative_numbers_are_dropped_as_sglang_drops_them() -> None:
    calls = CALL_SETS["three"]
    rendered = render("pythonic", calls)
    assert rendered.dropped == {2}  # add(a=-3, ...): not a literal to PythonicDetector
    assert [name for name, _ in sglang_parse("pythonic", rendered.text)[1]] == ["get_weather", "get_time"]


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinFactory]:
    made = StandinFactory(tmp_path_factory.mktemp("formats"))
    try:
        yield made
    finally:
        made.close()


def launch(factory: StandinFactory, parser: str) -> Standin:
    return factory.launch("--tool-call-parser", parser, "--served-model-name", "judge-model")


ASK = [{"role": "user", "content": "Call get_weather, get_time and search for me."}]


def stream_calls(
    client: httpx.Client, body: dict[str, Any]
) -> tuple[str, list[tuple[int, str | None, str]], list[str]]:
    """The stand-in's streamed content, tool-call deltas and call ids."""
    content = ""
    items: list[tuple[int, str | None, str]] = []
    ids: list[str] = []
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                content += choice["delta"].get("content") or ""
                for call in choice["delta"].get("tool_calls") or []:
                    items.append(
                        (call["index"], call["function"]["name"], call["function"]["arguments"] or "")
                    )
                    if call["id"]:
                        ids.append(call["id"])
    return content, items, ids


@pytest.mark.parametrize("parser", PARSERS)
def test_a_running_standins_answers_are_what_sglang_parses(factory: StandinFactory, parser: str) -> None:
    server = launch(factory, parser)
    history = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c0", "type": "function", "function": {"name": "ping", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c0", "content": "pong"}, *ASK]  # fmt: skip
    body = {"model": "judge-model", "messages": history, "tools": TOOLS, "logprobs": True}
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as client:
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        pieces = [entry["token"] for entry in choice["logprobs"]["content"]]
        raw = "".join(pieces)
        calls = choice["message"]["tool_calls"]
        assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time", "search"]
        assert choice["finish_reason"] == "tool_calls"
        normal, parsed = sglang_parse(parser, raw)  # SGLang reads the raw text ...
        assert parsed == [(c["function"]["name"], c["function"]["arguments"]) for c in calls]  # ... to these
        assert choice["message"]["content"] == normal
        if parser == "kimi_k2":  # serving_chat's ids count the history's calls
            assert [c["id"] for c in calls] == [
                "functions.get_weather:1",
                "functions.get_time:2",
                "functions.search:3",
            ]
        content, items, ids = stream_calls(client, body)
    streamed_text, streamed = sglang_stream(parser, pieces)
    assert content == streamed_text == ""
    assert joined(items) == joined(streamed) == {i: (n, a) for i, (n, a) in enumerate(parsed)}
    if parser in EXACT_STREAM:
        assert items == streamed
    assert len(ids) == 3
    if parser == "kimi_k2":
        assert ids == [c["id"] for c in calls]
