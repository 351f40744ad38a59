"""CAMEL's ChatAgent on a stand-in server launched by the library."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

camel = pytest.importorskip("camel")

from camel.agents import ChatAgent  # noqa: E402
from camel.configs import SGLangConfig as CamelSGLangConfig  # noqa: E402
from camel.models import BaseModelBackend  # noqa: E402
from camel.toolkits import FunctionTool  # noqa: E402
from camel.utils import BaseTokenCounter  # noqa: E402

from sglang_backend import ServerConfig, ServerState  # noqa: E402
from sglang_backend.integrations.camel import SGLangModel, SGLangTokenCounter  # noqa: E402

from ..conftest import MODEL  # noqa: E402
from .conftest import CityWeather, run_example  # noqa: E402

Standin = Callable[..., ServerConfig]
CALLS: list[str] = []


def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city (str): the city name.
    """
    CALLS.append(city)
    return f"Sunny and 21 C in {city}"


@pytest.fixture
def backend(standin: Standin) -> Iterator[SGLangModel]:
    model = SGLangModel(MODEL, CamelSGLangConfig(temperature=0).as_dict(),
                        server=standin(tool_call_parser="qwen"))
    with model:
        yield model
    assert model.state is ServerState.CLOSED


def test_is_a_camel_backend_with_the_same_constructor(standin: Standin) -> None:
    model = SGLangModel(MODEL, None, None, None, None, 30.0, server=standin())
    assert isinstance(model, BaseModelBackend)
    assert isinstance(model.token_counter, BaseTokenCounter)
    assert model.stream is False
    model.check_model_config()
    assert model.state is ServerState.CREATED  # no I/O in the constructor
    model.close()


def test_two_turn_conversation_sync(backend: SGLangModel) -> None:
    agent = ChatAgent("You are a helpful assistant.", model=backend)
    first = agent.step("My name is Ada")
    assert "My name is Ada" in first.msgs[0].content
    second = agent.step("What is my name?")
    assert "What is my name?" in second.msgs[0].content
    assert second.info["usage"]["prompt_tokens"] > first.info["usage"]["prompt_tokens"]


async def test_two_turn_conversation_async(standin: Standin) -> None:
    async with SGLangModel(MODEL, server=standin()) as backend:
        agent = ChatAgent("You are a helpful assistant.", model=backend)
        first = await agent.astep("My name is Ada")
        second = await agent.astep("What is my name?")
        assert "My name is Ada" in first.msgs[0].content
        assert "What is my name?" in second.msgs[0].content
        assert backend.state is ServerState.READY
    assert backend.state is ServerState.CLOSED


def test_tool_round_trip(backend: SGLangModel) -> None:
    CALLS.clear()
    agent = ChatAgent("Use tools when asked.", model=backend, tools=[FunctionTool(get_weather)])
    response = agent.step("Please call get_weather for Paris")
    records = response.info["tool_calls"]
    assert len(records) == 1
    assert records[0].tool_name == "get_weather"
    assert len(CALLS) == 1
    assert records[0].result == f"Sunny and 21 C in {CALLS[0]}"
    assert response.msgs[0].content  # the final answer after the tool result


async def test_tool_round_trip_async(backend: SGLangModel) -> None:
    CALLS.clear()
    agent = ChatAgent("Use tools when asked.", model=backend, tools=[FunctionTool(get_weather)])
    response = await agent.astep("Please call get_weather for Paris")
    assert [r.tool_name for r in response.info["tool_calls"]] == ["get_weather"]
    assert len(CALLS) == 1
    assert response.msgs[0].content


def test_structured_output(backend: SGLangModel) -> None:
    agent = ChatAgent("Report the weather.", model=backend)
    response = agent.step("Weather in Oslo", response_format=CityWeather)
    parsed = response.msgs[0].parsed
    assert isinstance(parsed, CityWeather)
    assert CityWeather.model_validate_json(response.msgs[0].content) == parsed


def test_streaming_sync(standin: Standin) -> None:
    with SGLangModel(MODEL, {"stream": True}, server=standin()) as backend:
        agent = ChatAgent("Be brief.", model=backend, stream_accumulate=False)
        pieces = [r.msgs[0].content for r in agent.step("Stream this back") if r.msgs]
    assert len(pieces) > 1  # deltas, one per chunk
    assert "Stream this back" in "".join(pieces)


async def test_streaming_async(standin: Standin) -> None:
    async with SGLangModel(MODEL, {"stream": True}, server=standin()) as backend:
        agent = ChatAgent("Be brief.", model=backend, stream_accumulate=False)
        response = await agent.astep("Stream this back")
        pieces = [r.msgs[0].content async for r in response if r.msgs]
    assert len(pieces) > 1  # deltas, one per chunk
    assert "Stream this back" in "".join(pieces)


def test_token_counting_uses_the_server_tokenizer(backend: SGLangModel) -> None:
    counter = backend.token_counter
    assert isinstance(counter, SGLangTokenCounter)
    messages = [{"role": "user", "content": "Hello there"}]
    n = counter.count_tokens_from_messages(messages)
    completion = backend.run(messages)
    assert completion.usage.prompt_tokens == n
    ids = counter.encode("Hello there")
    assert ids
    assert counter.decode(ids) == "Hello there"
    assert backend.token_limit > n


def test_example_runs() -> None:
    out = run_example("camel_agent.py")
    assert "You said: Hello, my name is Ada" in out
