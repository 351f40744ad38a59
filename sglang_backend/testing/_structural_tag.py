"""Structural tags (``response_format={"type": "structural_tag", ...}``) for the stand-in.

SGLang's llguidance backend (``GuidanceBackend.dispatch_structural_tag``) compiles the legacy
form: each structure becomes an llguidance ``StructTag`` (its trigger the first of
``triggers`` that prefixes its ``begin``, else the first), so free text may run until a
trigger, after which ``begin``, a JSON document valid for ``schema`` and ``end`` are
enforced. The stand-in compiles it the same way, so its outputs are valid by construction.
xgrammar's ``format`` form (SGLang's default backend) is refused, as the llguidance backend
refuses it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sglang_backend.testing._schema import SchemaError, example_for_schema

__all__ = ["compile_structural_tag", "structural_tag_target"]


def compile_structural_tag(text: str) -> str:
    """The llguidance grammar of a structural tag (raises ``_grammar.GrammarError``)."""
    import llguidance

    from sglang_backend.testing import _grammar

    tag = json.loads(text)
    if tag.get("structures") is None:
        raise _grammar.GrammarError(
            "only the legacy structural tag (structures + triggers) compiles with the llguidance backend"
        )
    triggers: list[str] = list(tag.get("triggers") or [])
    if not triggers:
        raise _grammar.GrammarError("a structural tag needs at least one trigger")
    try:
        tags = [
            llguidance.StructTag(
                begin=structure["begin"],
                grammar=structure["schema"],
                end=structure["end"],
                trigger=next((t for t in triggers if structure["begin"].startswith(t)), triggers[0]),
            )
            for structure in tag["structures"]
        ]
        lark = llguidance.StructTag.to_grammar(tags)
    except (AssertionError, TypeError, ValueError, KeyError) as exc:
        raise _grammar.GrammarError(str(exc) or type(exc).__name__) from exc
    return _grammar.compile_grammar("lark", lark)


def structural_tag_target(text: str) -> str:
    """What the model aims at: the first structure, filled with an example of its schema."""
    tag: Mapping[str, Any] = json.loads(text)
    structures = tag.get("structures") or []
    if not structures:
        return ""
    first = structures[0]
    try:
        body = json.dumps(example_for_schema(first.get("schema") or {}))
    except SchemaError:
        body = ""  # the grammar alone shapes the document
    return f"{first['begin']}{body}{first['end']}"
