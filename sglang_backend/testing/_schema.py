"""JSON Schemas in the stand-in: SGLang's tool-schema checks, and example values.

:func:`tool_schema_problem` says what SGLang's serving layer says about tool
``parameters`` (checked against the 2020-12 metaschema with ``jsonschema``, as SGLang
does) and about tools whose ``$defs`` clash when ``tool_choice`` forces a call.
:func:`example_for_schema` generates a deterministic value for a schema: the answer the
stand-in "wants" to give; the grammar engine (``_grammar``) makes the output valid.

Covers what structured-output and tool schemas use in practice: objects (properties,
required, additionalProperties), arrays (items, prefixItems, minItems/maxItems),
strings (enum, const, format, min/maxLength), numbers and integers (minimum, maximum,
exclusive bounds, multipleOf), booleans, null, ``$ref`` into ``$defs``/``definitions``,
``anyOf``/``oneOf`` (first usable branch) and ``allOf`` (merged).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["SchemaError", "example_for_schema", "tool_schema_problem"]

_MAX_DEPTH = 24
_SHALLOW = 6

_FORMATS: dict[str, str] = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00",
    "duration": "P1D",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "iri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "regex": ".*",
    "json-pointer": "/a",
}


class SchemaError(ValueError):
    """The schema cannot be instantiated (bad ``$ref``, contradictory bounds…)."""


def tool_schema_problem(parameters: Sequence[Mapping[str, Any] | None], *, forced: bool) -> str | None:
    """SGLang's 400 text for the tools' *parameters* (in tools order), or None if fine.

    Each schema must be a valid JSON Schema (2020-12).  When *forced* (``tool_choice``
    ``required`` or a named tool) SGLang builds one schema over all tools and merges their
    ``$defs``; the same name with different schemas is refused.
    """
    for index, schema in enumerate(parameters):
        if schema is None:
            continue
        try:
            import jsonschema  # imported on the first tool schema check, not at startup

            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            return f"Tool {index} function has invalid 'parameters' schema: {exc}"
    if forced:
        merged: dict[str, Any] = {}
        for schema in parameters:
            for name, definition in ((schema or {}).get("$defs") or {}).items():
                if name in merged and merged[name] != definition:
                    return f"Tool definition '{name}' has multiple schemas, which is not supported."
                merged[name] = definition
    return None


def example_for_schema(schema: Mapping[str, Any], *, hint: str = "stand-in") -> Any:
    """Return a value valid for *schema*; strings are built from *hint*."""
    return _Generator(schema, hint).value(schema, 0, "")


class _Generator:
    """Walks a schema, resolving references against its root."""

    def __init__(self, root: Mapping[str, Any], hint: str) -> None:
        self.root = root
        self.hint = hint or "stand-in"

    def resolve(self, ref: str) -> Mapping[str, Any]:
        """Resolve a local JSON pointer such as ``#/$defs/Item``."""
        if not ref.startswith("#"):
            raise SchemaError(f"unsupported $ref {ref!r}")
        node: Any = self.root
        for raw in ref[1:].split("/"):
            if not raw:
                continue
            key = raw.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or key not in node:
                raise SchemaError(f"unresolvable $ref {ref!r}")
            node = node[key]
        if not isinstance(node, Mapping):
            raise SchemaError(f"$ref {ref!r} is not a schema")
        return node

    def value(self, schema: Any, depth: int, name: str) -> Any:
        """Return a value for *schema* at recursion *depth* (property *name* as a hint)."""
        if schema is True or schema is None:
            return self.hint
        if schema is False or not isinstance(schema, Mapping):
            raise SchemaError("schema false cannot be satisfied")
        if depth > _MAX_DEPTH:
            raise SchemaError("schema nesting too deep")
        if "$ref" in schema:
            target = dict(self.resolve(str(schema["$ref"])))
            target.update({k: v for k, v in schema.items() if k != "$ref"})
            return self.value(target, depth + 1, name)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        if "allOf" in schema:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part_map = self.resolve(part["$ref"]) if "$ref" in part else part
                for key, item in part_map.items():
                    if key in {"properties"} and key in merged:
                        merged[key] = {**merged[key], **item}
                    elif key == "required" and key in merged:
                        merged[key] = [*merged[key], *item]
                    else:
                        merged.setdefault(key, item)
            return self.value(merged, depth + 1, name)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.first_branch(schema, key, depth, name)
        kind = schema.get("type")
        if isinstance(kind, list):
            usable = [k for k in kind if k != "null"]
            kind = usable[0] if usable else "null"
        if kind is None:
            if "properties" in schema or "required" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            elif any(k in schema for k in ("minimum", "maximum", "multipleOf")):
                kind = "number"
            else:
                kind = "string"
        method = getattr(self, f"make_{kind}", None)
        if method is None:
            raise SchemaError(f"unsupported type {kind!r}")
        return method(schema, depth, name)

    def first_branch(self, schema: Mapping[str, Any], key: str, depth: int, name: str) -> Any:
        """Use the first branch of ``anyOf``/``oneOf`` that can be generated."""
        base = {k: v for k, v in schema.items() if k != key}
        last_error: SchemaError | None = None
        branches = list(schema[key])
        if depth > _SHALLOW:
            branches.sort(key=lambda b: 0 if isinstance(b, Mapping) and b.get("type") == "null" else 1)
        for branch in branches:
            candidate = {**base, **branch} if isinstance(branch, Mapping) else branch
            try:
                return self.value(candidate, depth + 1, name)
            except SchemaError as exc:
                last_error = exc
        raise last_error or SchemaError(f"empty {key}")

    def make_null(self, schema: Mapping[str, Any], depth: int, name: str) -> None:
        """Return null."""
        return None

    def make_boolean(self, schema: Mapping[str, Any], depth: int, name: str) -> bool:
        """Return true."""
        return True

    def make_string(self, schema: Mapping[str, Any], depth: int, name: str) -> str:
        """Return a string honouring format and length bounds."""
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt]
        text = f"{name} {self.hint}".strip() if name else self.hint
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        if len(text) < low:
            text = (text + " " + "x" * low)[: max(low, 1)]
        if high is not None and len(text) > int(high):
            text = text[: int(high)]
        return text

    def make_integer(self, schema: Mapping[str, Any], depth: int, name: str) -> int:
        """Return an integer within the bounds."""
        return int(self.number(schema, integer=True))

    def make_number(self, schema: Mapping[str, Any], depth: int, name: str) -> float | int:
        """Return a number within the bounds."""
        return self.number(schema, integer=False)

    def number(self, schema: Mapping[str, Any], *, integer: bool) -> float | int:
        """Pick a number inside ``[minimum, maximum]`` (respecting exclusive bounds)."""
        low: float = -math.inf
        high: float = math.inf
        if "minimum" in schema:
            low = float(schema["minimum"])
        if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
            low = max(low, float(schema["exclusiveMinimum"]) + (1 if integer else 1e-6))
        if "maximum" in schema:
            high = float(schema["maximum"])
        if "exclusiveMaximum" in schema and not isinstance(schema["exclusiveMaximum"], bool):
            high = min(high, float(schema["exclusiveMaximum"]) - (1 if integer else 1e-6))
        step = schema.get("multipleOf")
        candidate: float = 1.0 if low <= 1.0 <= high else (low if low > -math.inf else high)
        if integer:
            candidate = math.ceil(candidate) if candidate == low else math.floor(candidate)
        if step:
            step_f = float(step)
            candidate = math.ceil(candidate / step_f) * step_f
            if candidate > high:
                candidate = math.floor(high / step_f) * step_f
        if candidate < low or candidate > high:
            raise SchemaError("numeric bounds cannot be satisfied")
        if integer or float(candidate).is_integer():
            return int(candidate)
        return candidate

    def make_array(self, schema: Mapping[str, Any], depth: int, name: str) -> list[Any]:
        """Return an array honouring items, prefixItems and size bounds."""
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        count = max(low, 1) if depth <= _SHALLOW else low
        if high is not None:
            count = min(count, int(high))
        prefix = list(schema.get("prefixItems") or [])
        items = schema.get("items", True)
        out: list[Any] = []
        for index in range(count):
            sub = prefix[index] if index < len(prefix) else items
            if sub is False:
                break
            out.append(self.value(sub, depth + 1, name))
        if schema.get("uniqueItems") and len(out) > 1:
            out = out[:1] if low <= 1 else out
        return out

    def make_object(self, schema: Mapping[str, Any], depth: int, name: str) -> dict[str, Any]:
        """Return an object with every declared property (and enough extras for minProperties)."""
        props: Mapping[str, Any] = schema.get("properties") or {}
        required = list(schema.get("required") or [])
        out: dict[str, Any] = {}
        for key, sub in props.items():
            if depth > _SHALLOW and key not in required:
                continue
            try:
                out[key] = self.value(sub, depth + 1, key)
            except SchemaError:
                if key in required:
                    raise
        for key in required:
            if key not in out:
                extra = schema.get("additionalProperties", True)
                out[key] = self.value(extra if isinstance(extra, Mapping) else True, depth + 1, key)
        minimum = int(schema.get("minProperties", 0))
        extra_schema = schema.get("additionalProperties", True)
        index = 0
        while len(out) < minimum and extra_schema is not False:
            key = f"key{index}"
            index += 1
            if key not in out:
                sub_schema = extra_schema if isinstance(extra_schema, Mapping) else True
                out[key] = self.value(sub_schema, depth + 1, key)
        return out
