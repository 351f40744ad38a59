"""The pool file of ``sglang-backend serve --pool FILE``: TOML, read with the standard library.

TOML because :mod:`tomllib` is in the standard library from Python 3.11 (``tomli``, its
backport, on 3.10: the ``[front]`` extra installs it), it has real types (no YAML ``no`` →
False surprises) and it maps one table to one ``ServerConfig``. See docs/pool.md.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from .config import ServerConfig
from .errors import ConfigError
from .pool import ModelPool
from .server import EventCallback

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["PoolFile", "load_pool_file"]

POOL_KEYS = {"max_loaded", "max_waiting", "wait_timeout", "serial_starts"}
FRONT_KEYS = {"host", "port", "api_key_env"}
MODEL_KEYS = {"model_path", "aliases", "pinned", "group", "gpus", "memory", "timeout", "evict",
              "model_config", "server"}


def _check(table: Mapping[str, Any], allowed: set[str], where: str, path: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in {where}: {', '.join(unknown)} "
                          f"(allowed: {', '.join(sorted(allowed))})")


@dataclass
class PoolFile:
    """A parsed pool file: pool policy, front options and the members, validated."""

    path: Path
    pool: dict[str, Any] = field(default_factory=dict)
    front: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def build(self, *, on_event: EventCallback | None = None) -> ModelPool:
        """A :class:`ModelPool` with every member added (no I/O)."""
        pool = ModelPool(**self.pool, on_event=on_event)
        for name, table in self.models.items():
            spec = dict(table)
            model_path = spec.pop("model_path")
            config = spec.pop("model_config", None)
            pool.add(name, model_path, model_config_dict=config, **spec)
        return pool


def load_pool_file(path: str | Path) -> PoolFile:
    """Read and validate a pool file; ConfigError says what is wrong and where."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the pool file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    _check(data, {"pool", "front", "models"}, "the top level", path)
    parsed = PoolFile(path, dict(data.get("pool", {})), dict(data.get("front", {})))
    _check(parsed.pool, POOL_KEYS, "[pool]", path)
    _check(parsed.front, FRONT_KEYS, "[front]", path)
    models = data.get("models", {})
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"{path}: no models: add at least one [models.NAME] table")
    for name, table in models.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: models.{name} must be a table")
        _check(table, MODEL_KEYS, f"[models.{name}]", path)
        if not isinstance(table.get("model_path"), str):
            raise ConfigError(f"{path}: [models.{name}] needs model_path = \"...\"")
        spec = dict(table)
        try:
            spec["server"] = ServerConfig(**spec.get("server", {}))
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{path}: [models.{name}.server]: {problems}") from None
        except ConfigError as exc:
            raise ConfigError(f"{path}: [models.{name}.server]: {exc}") from None
        parsed.models[name] = spec
    try:  # names, aliases, budgets and policy checked as the pool would
        parsed.build()
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parsed
