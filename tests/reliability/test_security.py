"""Security defaults: loopback bind, the generated key is required, the key never leaks, and
extra_args cannot override the managed flags."""

from __future__ import annotations

import logging
from collections.abc import Callable

import openai
import pytest

from sglang_backend import (
    AsyncSGLangModel,
    AuthenticationError,
    ConfigError,
    ServerConfig,
    ServerCrashedError,
    ServerEvent,
    ServerStartError,
    SGLangModel,
)

from ..conftest import MODEL
from ._support import HELLO, listening_addresses

Standin = Callable[..., ServerConfig]
KEY = "sk-reliability-secret-0123456789abcdef"


def test_default_bind_is_loopback() -> None:
    args = ServerConfig().server_args(MODEL, port=30000, api_key="k")
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert ServerConfig().host == "127.0.0.1"


async def test_launched_server_listens_on_loopback_only(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, server=standin()) as model:
        assert model.pid is not None
        addresses = listening_addresses(model.pid)
        assert addresses, "the server should be listening"
        assert set(addresses) == {"127.0.0.1"}, addresses


async def test_generated_key_is_required_by_the_server(standin: Standin) -> None:
    async with AsyncSGLangModel(MODEL, server=standin()) as model:
        key = model.api_key
        assert key is not None
        assert len(key) >= 32
        url = f"{model.base_url}/v1"
        without = {"Authorization": openai.omit}  # no Authorization header at all
        for wrong, headers in (("unused", without), ("not-the-key", {}), (key[:-1], {})):
            async with openai.AsyncOpenAI(base_url=url, api_key=wrong, max_retries=0) as sdk:
                with pytest.raises(openai.AuthenticationError) as info:
                    await sdk.chat.completions.create(
                        model=MODEL, messages=HELLO, extra_headers=headers  # type: ignore[arg-type]
                    )
                assert info.value.status_code == 401
                sent = info.value.response.request.headers
                assert ("authorization" in sent) == (headers is not without)
        async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0) as sdk:
            reply = await sdk.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
            assert reply.choices[0].message.content
        # Through the library in connect mode, a wrong key is a typed error (at start already).
        client = AsyncSGLangModel(MODEL, api_key="wrong", url=model.base_url)
        try:
            with pytest.raises(AuthenticationError):
                await client.start()
            with pytest.raises(AuthenticationError):
                await client.run(HELLO)
        finally:
            await client.aclose()


def test_two_models_get_different_keys(standin: Standin) -> None:
    with SGLangModel(MODEL, server=standin()) as a, SGLangModel(MODEL, server=standin()) as b:
        assert a.api_key
        assert b.api_key
        assert a.api_key != b.api_key


async def test_key_never_in_logs_reprs_events_or_errors(
    standin: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sglang_backend")
    events: list[ServerEvent] = []
    texts: list[str] = []
    # A given key, a failing start (the stand-in logs server_args, key included, like SGLang).
    failing = standin(api_key=KEY, fail_at_load="boom (stand-in)")
    texts += [repr(failing), str(failing), repr(failing.api_key)]
    model = AsyncSGLangModel(MODEL, server=failing, on_event=events.append)
    with pytest.raises(ServerStartError) as start_info:
        await model.run(HELLO)
    err = start_info.value
    assert any("server_args" in line for line in err.log_tail), "the log tail should show args"
    texts += [str(err), repr(err), " ".join(err.command), *err.log_tail, repr(model)]
    await model.aclose()
    # A crash while serving, with the same key.
    model = AsyncSGLangModel(MODEL, api_key=KEY, server=standin(crash_after=1),
                             on_event=events.append)
    async with model:
        await model.run(HELLO)
        texts.append(repr(model))
        with pytest.raises(ServerCrashedError) as crash_info:
            await model.run(HELLO)
        texts += [str(crash_info.value), repr(crash_info.value), *crash_info.value.log_tail]
        await model.run(HELLO)
    texts += [repr(e) for e in events]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.args) for record in caplog.records]
    assert caplog.records
    assert "--config" in err.command  # the key is in the private file, not argv
    leaks = [t for t in texts if KEY in t]
    assert not leaks, leaks[:3]


@pytest.mark.parametrize("smuggled", [
    ["--api-key", "evil"], ["--api-key=evil"], ["--api-k", "evil"],
    ["--host", "0.0.0.0"], ["--host=0.0.0.0"], ["--ho=0.0.0.0"],
    ["--port", "1"], ["--port=1"],
    ["--model-path", "other/model"], ["--model-path=other/model"], ["--model", "other"],
    ["--model=other"],
    ["--log-level", "info", "--host", "::"],
], ids=" ".join)
def test_extra_args_cannot_smuggle_managed_flags(smuggled: list[str]) -> None:
    with pytest.raises(ConfigError, match="extra_args may not contain"):
        ServerConfig(extra_args=smuggled)
