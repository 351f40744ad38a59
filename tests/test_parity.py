"""The blocking facade must not drift from the async model: every public member exists on both."""

from __future__ import annotations

import inspect

from sglang_backend import AsyncSGLangModel, SGLangModel

# Members that differ on purpose, with the reason.
ASYNC_ONLY = {
    "aclose": "async spelling of close(); the facade has close()",
    "request_path": "the loop-side admission object; the facade's leased clients use it",
}
SYNC_ONLY = {
    "close": "blocking spelling of aclose()",
    "async_model": "the async model behind the facade",
    "closed": "whether close() ran (the async model reports state CLOSED)",
    "call_async": "runs a coroutine on the facade's loop",
    "submit_async": "starts a coroutine on the facade's loop",
}


def _public(cls: type) -> set[str]:
    # Instance attributes too (model_type, model_config_dict): constructors do no I/O.
    instance = cls("Qwen/Qwen2.5-0.5B-Instruct")
    names = {name for name in (*dir(cls), *vars(instance)) if not name.startswith("_")}
    if isinstance(instance, SGLangModel):
        instance.close()
    return names


def test_every_public_async_member_has_a_blocking_twin() -> None:
    missing = _public(AsyncSGLangModel) - _public(SGLangModel) - set(ASYNC_ONLY)
    assert not missing, f"SGLangModel lacks {sorted(missing)}"


def test_the_facade_adds_only_what_is_listed() -> None:
    extra = _public(SGLangModel) - _public(AsyncSGLangModel) - set(SYNC_ONLY)
    assert not extra, f"SGLangModel has members the async model lacks: {sorted(extra)}"


def test_twins_take_the_same_parameters() -> None:
    for name in sorted(_public(AsyncSGLangModel) & _public(SGLangModel)):
        if not (hasattr(AsyncSGLangModel, name) and hasattr(SGLangModel, name)):
            continue  # an instance attribute on one side, a property on the other
        a, s = getattr(AsyncSGLangModel, name), getattr(SGLangModel, name)
        if isinstance(a, property) or not callable(a):
            assert isinstance(s, property) == isinstance(a, property), name
            continue
        a_params = list(inspect.signature(a).parameters)
        s_params = list(inspect.signature(s).parameters)
        assert a_params == s_params, f"{name}: async {a_params} vs sync {s_params}"
