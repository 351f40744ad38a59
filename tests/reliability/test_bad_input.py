"""Bad input matrix: each mistake gets a clear typed error before any I/O (nothing launched,
state still CREATED), and the model stays usable afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sglang_backend import (
    AsyncSGLangModel,
    ConfigError,
    InvalidRequestError,
    LaunchCommandNotFoundError,
    ServerConfig,
    ServerStartError,
    ServerState,
    SGLangConfig,
    SGLangError,
    SGLangModel,
)

from ..conftest import MODEL
from ._support import HELLO, alive, tree

Standin = Callable[..., ServerConfig]
ROLES = {"system", "user", "assistant", "tool", "function", "developer"}
FIXTURE_OK = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One private loop for a hypothesis run (the examples are driven synchronously)."""
    new = asyncio.new_event_loop()
    yield new
    new.close()


async def _good_request_then_close(model: AsyncSGLangModel) -> None:
    try:
        reply = await model.run(HELLO)
        assert reply.choices[0].message.content
        assert model.server is not None
        assert model.server.launches == 1
    finally:
        await model.aclose()


# -- strategies: each draws something surely invalid ------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=5), st.binary(max_size=5))
junk = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
), max_leaves=8)
good_message = st.sampled_from([
    {"role": "user", "content": "hi"},
    {"role": "system", "content": "be brief"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
])
bad_role = st.one_of(
    st.text(max_size=8).filter(lambda r: r not in ROLES),
    st.integers(), st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(), st.text()),
)
bad_part = st.one_of(
    scalars,
    st.fixed_dictionaries({"type": st.text(max_size=8).filter(
        lambda t: t not in {"text", "image_url", "video_url", "audio_url", "input_audio"})}),
    st.fixed_dictionaries({"type": st.one_of(st.integers(), st.lists(st.text(), max_size=2))}),
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.none(), st.integers())}),
)
bad_message = st.one_of(
    st.one_of(st.integers(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2)),
    st.fixed_dictionaries({"content": st.text(max_size=5)}),  # no role
    st.fixed_dictionaries({"role": bad_role, "content": st.text(max_size=5)}),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "tool"]),
                           "content": st.one_of(st.none(), st.integers(), st.floats(),
                                                st.dictionaries(st.text(), st.text(), max_size=2),
                                                st.binary(max_size=3))}),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]),
                           "content": st.lists(bad_part, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"role": st.just("tool"), "content": st.text(max_size=5)}),
)


@st.composite
def bad_messages(draw: st.DrawFn) -> object:
    if draw(st.booleans()):
        return draw(st.one_of(st.text(), st.binary(), st.integers(), st.none(), st.floats(),
                              st.just([]), st.just(())))
    messages = draw(st.lists(good_message, max_size=3))
    messages.insert(draw(st.integers(0, len(messages))), draw(bad_message))
    return messages


tool_name = st.text(min_size=1, max_size=6)
bad_function = st.one_of(
    scalars,
    st.fixed_dictionaries({}),  # no name
    st.fixed_dictionaries({"name": st.one_of(st.just(""), st.integers(), st.none())}),
    st.fixed_dictionaries({"name": tool_name, "parameters": st.one_of(
        st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
        st.fixed_dictionaries({"type": st.sampled_from(["array", "string", "integer", "null"])}),
    )}),
)
bad_tool = st.one_of(
    st.one_of(st.integers(), st.text(max_size=4), st.none(), st.just(int)),
    st.fixed_dictionaries({"type": st.text(max_size=8).filter(lambda t: t != "function"),
                           "function": st.just({"name": "f"})}),
    st.fixed_dictionaries({"type": st.just("function"), "function": bad_function}),
)


@st.composite
def bad_tools(draw: st.DrawFn) -> object:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(st.one_of(st.text(min_size=1), st.integers(), st.just({"type": "function"})))
    good = {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}}
    if choice == 1:
        return [good, good]  # duplicate names
    tools = [good]
    tools.insert(draw(st.integers(0, 1)), draw(bad_tool))
    return tools


class Point(pydantic.BaseModel):
    x: int


@dataclasses.dataclass
class DataPoint:
    x: int


class TypedPoint(TypedDict):
    x: int


class Color(enum.Enum):
    RED = 1


bad_response_format = st.one_of(
    st.sampled_from([int, dict, str, list, DataPoint, TypedPoint, Color, Point(x=1), object()]),
    scalars.filter(lambda v: v is not None),
    st.fixed_dictionaries({"type": st.one_of(
        st.text(max_size=8).filter(lambda t: t not in {"text", "json_object", "json_schema"}),
        st.integers(), st.none(), st.lists(st.text(), max_size=2))}),
    st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": st.one_of(
        scalars, st.fixed_dictionaries({"name": st.just("x")}),
        st.fixed_dictionaries({"name": st.just("x"), "schema": scalars}))}),
)


# -- request-level inputs: typed before I/O, model usable after -----------------------------------
def test_malformed_messages(standin: Standin, loop: asyncio.AbstractEventLoop) -> None:
    model = AsyncSGLangModel(MODEL, server=standin())
    seen = 0

    @FIXTURE_OK
    @given(bad_messages())
    def check(messages: object) -> None:
        nonlocal seen
        with pytest.raises(InvalidRequestError):
            loop.run_until_complete(model.run(messages))
        assert model.state is ServerState.CREATED
        assert model.server is None  # nothing prepared, nothing launched
        seen += 1

    check()
    loop.run_until_complete(_good_request_then_close(model))
    print(f"malformed messages: {seen} examples, all InvalidRequestError before I/O")


def test_bad_tool_schemas(standin: Standin, loop: asyncio.AbstractEventLoop) -> None:
    model = AsyncSGLangModel(MODEL, server=standin(tool_call_parser="qwen"))

    @FIXTURE_OK
    @given(bad_tools())
    def check(tools: object) -> None:
        with pytest.raises(InvalidRequestError):
            loop.run_until_complete(model.run(HELLO, tools=tools))
        assert model.state is ServerState.CREATED
        assert model.server is None

    check()
    loop.run_until_complete(_good_request_then_close(model))


def test_response_format_that_is_not_a_model(standin: Standin, loop: asyncio.AbstractEventLoop) -> None:
    model = AsyncSGLangModel(MODEL, server=standin())

    @FIXTURE_OK
    @given(bad_response_format)
    def check(response_format: object) -> None:
        with pytest.raises(InvalidRequestError, match="response_format"):
            loop.run_until_complete(model.run(HELLO, response_format=response_format))
        assert model.server is None

    check()
    with pytest.raises(ConfigError, match="stream"):  # a model class cannot be streamed
        loop.run_until_complete(model.run(HELLO, response_format=Point, stream=True))
    assert model.state is ServerState.CREATED
    loop.run_until_complete(_good_request_then_close(model))


def test_arbitrary_junk_never_escapes_untyped(loop: asyncio.AbstractEventLoop) -> None:
    """Anything at all as messages/tools/response_format: only SGLangError subclasses come out
    (a launch command that does not exist stands in for the server, so nothing runs)."""
    model = AsyncSGLangModel(MODEL, server=ServerConfig(launch_command=["/nonexistent/launcher"],
                                                        tool_call_parser="qwen"))

    @settings(max_examples=300, deadline=None)
    @given(junk, st.one_of(st.none(), junk), st.one_of(st.none(), junk))
    def check(messages: Any, tools: Any, response_format: Any) -> None:
        with contextlib.suppress(SGLangError):
            loop.run_until_complete(model.run(messages, response_format=response_format,
                                              tools=tools))

    try:
        check()
    finally:
        loop.run_until_complete(model.aclose())


def test_sync_facade_bad_requests_then_a_good_one(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin(tool_call_parser="qwen")) as model:
        for kwargs in ({"messages": "hello"}, {"messages": [{"role": ["user"], "content": "x"}]},
                       {"messages": HELLO, "tools": [{"type": "function", "function": {}}]},
                       {"messages": HELLO, "response_format": DataPoint}):
            with pytest.raises(InvalidRequestError):
                model.run(**kwargs)  # type: ignore[call-overload]
        reply = model.run(HELLO)
        assert reply.choices[0].message.content  # type: ignore[union-attr]
        server = model.async_model.server
        assert server is not None
        assert server.launches == 1
    model = SGLangModel(MODEL, server=standin())
    with pytest.raises(InvalidRequestError):
        model.run([])
    assert model.state is ServerState.CREATED
    assert model.async_model.server is None
    model.close()


# -- configuration: ConfigError at construction ----------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=12).filter(lambda k: k not in SGLangConfig.model_fields))
def test_unknown_model_config_keys(key: str) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        AsyncSGLangModel(MODEL, {key: 1})


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=12).filter(lambda k: k not in ServerConfig.model_fields))
def test_unknown_server_config_keys(key: str) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        ServerConfig(**{key: 1})


WRONG_TYPES: list[tuple[str, dict[str, Any]]] = [
    ("model_config_dict", {"temperature": "hot"}),
    ("model_config_dict", {"max_tokens": [1]}),
    ("model_config_dict", {"stop": 3}),
    ("model_config_dict", {"top_k": 1.5}),
    ("model_config_dict", {"response_format": {"type": "yaml"}}),
    ("model_config_dict", {"tools": [{"type": "function", "function": {"name": ""}}]}),
    ("server", {"port": "eighty"}),
    ("server", {"port": 0}),
    ("server", {"extra_args": "--foo bar"}),
    ("server", {"extra_args": [1, 2]}),
    ("server", {"env": {"A": 1}}),
    ("server", {"launch_command": "python -m sglang.launch_server"}),
    ("server", {"launch_command": []}),
    ("server", {"tp_size": 0}),
    ("server", {"mem_fraction_static": 1.5}),
    ("server", {"replicas": 0}),
    ("server", {"served_model_name": "a:b"}),
]


@pytest.mark.parametrize(("where", "value"), WRONG_TYPES, ids=[str(v) for _, v in WRONG_TYPES])
def test_wrong_types_are_config_errors(where: str, value: dict[str, Any]) -> None:
    def build() -> object:
        return ServerConfig(**value) if where == "server" else AsyncSGLangModel(MODEL, value)

    with pytest.raises((ConfigError, InvalidRequestError)) as info:
        build()
    assert isinstance(info.value, ValueError)  # both are ValueErrors too


@pytest.mark.parametrize("kwargs", [
    {"model_type": None}, {"model_type": ""}, {"model_type": 3},
    {"model_config_dict": ["temperature", 0.5]}, {"model_config_dict": {1: 2}},
    {"server": {"port": 8000}}, {"on_event": "print"}, {"api_key": 1234},
    {"url": "localhost:30000"}, {"url": "http://127.0.0.1:1", "server": ServerConfig()},
], ids=lambda k: ",".join(f"{a}={b!r}" for a, b in k.items()))
def test_wrong_constructor_arguments(kwargs: dict[str, Any]) -> None:
    kwargs = {"model_type": MODEL, **kwargs}
    with pytest.raises(ConfigError):
        AsyncSGLangModel(**kwargs)
    with pytest.raises(ConfigError):
        SGLangModel(**kwargs)


# -- absurd timeouts ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -1, -0.0, math.inf, -math.inf, math.nan, "abc", [5], True])
def test_absurd_request_timeouts(value: object) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        AsyncSGLangModel(MODEL, timeout=value)  # type: ignore[arg-type]


TIMEOUT_FIELDS = {
    # field: values rejected at construction
    "startup_timeout": [0, -1, math.inf, math.nan, 1e300, "soon"],
    "inactivity_timeout": [0, -1, math.nan, "idle"],
    "shutdown_timeout": [-1, math.inf, math.nan, 1e300, "now"],
}


@pytest.mark.parametrize(("field", "value"), [
    (f, v) for f, values in TIMEOUT_FIELDS.items() for v in values
], ids=repr)
def test_absurd_server_timeouts(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        ServerConfig(**{field: value})


async def test_extreme_but_accepted_timeouts_work(standin: Standin) -> None:
    # inactivity_timeout=inf never idles; shutdown_timeout=0 kills at once; a huge request
    # timeout is a long wait, not an overflow.
    config = standin(inactivity_timeout=math.inf, shutdown_timeout=0)
    async with AsyncSGLangModel(MODEL, server=config, timeout=1e300) as model:
        procs = tree(model.pid)
        reply = await model.run(HELLO)
        assert reply.choices[0].message.content
        stream = await model.run(HELLO, stream=True)
        assert [chunk async for chunk in stream]
    assert not alive(procs)
    async with AsyncSGLangModel(MODEL, server=standin(inactivity_timeout=1e300)) as model:
        assert (await model.run(HELLO)).choices[0].message.content


# -- launch command and environment ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["missing", "directory", "not-executable"])
async def test_launch_command_that_cannot_run(tmp_path: Path, kind: str) -> None:
    target = {"missing": tmp_path / "no-such-launcher", "directory": tmp_path,
              "not-executable": tmp_path / "launcher.sh"}[kind]
    if kind == "not-executable":
        target.write_text("#!/bin/sh\nexit 0\n")
        os.chmod(target, 0o644)
    model = AsyncSGLangModel(MODEL, server=ServerConfig(launch_command=[str(target), "--x"]))
    started = time.monotonic()
    with pytest.raises(LaunchCommandNotFoundError) as info:
        await model.run(HELLO)
    elapsed = time.monotonic() - started
    assert str(target) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert model.pid is None
    assert elapsed < 10  # immediate: no startup_timeout wait (default 1800 s)
    await model.aclose()


def test_launch_command_not_found_sync() -> None:
    model = SGLangModel(MODEL, server=ServerConfig(launch_command=["sglang-no-such-binary"]))
    try:
        with pytest.raises(LaunchCommandNotFoundError, match="sglang-no-such-binary"):
            model.start()
    finally:
        model.close()


async def test_env_that_breaks_the_server(standin: Standin) -> None:
    # A PYTHONPATH pointing nowhere is harmless (control) ...
    async with AsyncSGLangModel(MODEL, server=standin(env={"PYTHONPATH": "/nonexistent"})) as ok:
        assert (await ok.run(HELLO)).choices[0].message.content
    # ... a PYTHONHOME pointing nowhere kills the interpreter before it runs a line.
    model = AsyncSGLangModel(MODEL, server=standin(env={"PYTHONHOME": "/nonexistent"}))
    started = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        await model.run(HELLO)
    elapsed = time.monotonic() - started
    err = info.value
    assert err.returncode not in (None, 0)
    tail = "\n".join(err.log_tail)
    assert "encodings" in tail or "PYTHONHOME" in tail, tail
    assert tail in str(err) or err.log_tail[-1] in str(err)
    assert elapsed < 10
    await model.aclose()


def test_launcher_marker_cannot_be_overridden_by_env(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin(env={"SGLANG_BACKEND_LAUNCHER_PID": "1"})) as model:
        import psutil

        assert model.pid is not None
        marker = psutil.Process(model.pid).environ()["SGLANG_BACKEND_LAUNCHER_PID"]
        assert marker == str(os.getpid())
