"""pydantic validation errors as the one-line problems the library's errors show."""

from __future__ import annotations

from collections.abc import Collection

from pydantic import ValidationError

__all__ = ["validation_problems"]


def validation_problems(
    exc: ValidationError,
    *,
    unknown: str,
    allowed_label: str,
    allowed: Collection[str] = (),
    field_prefix: str = "",
) -> list[str]:
    """One line per problem: ``"{unknown} 'k'; {allowed_label}: a, b"`` for an unknown key,
    ``"{field_prefix}{loc}: {msg} (got {input!r})"`` otherwise."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(value)"
        if err["type"] == "extra_forbidden":
            msg = f"{unknown} {loc!r}"
            if allowed:
                msg += f"; {allowed_label}: {', '.join(sorted(allowed))}"
        else:
            msg = f"{field_prefix}{loc}: {err['msg']} (got {err.get('input')!r})"
        problems.append(msg)
    return problems
