"""``--config FILE.yaml`` merged into argv the way SGLang 0.5.23's ``ConfigArgumentMerger`` does.

SGLang turns the YAML mapping into flags and puts them *before* the command line, so CLI
flags win. Per value: ``true`` on a store_true flag adds the bare flag, ``false`` drops it;
a boolean on any other flag becomes ``--key true|false``; a list becomes ``--key a b``
(an empty list is dropped); a mapping becomes its JSON; anything else ``--key str(value)``.
The key is used verbatim as the flag name (``--{key}``): a key spelled with underscores
(``skip_server_warmup``) therefore reaches argparse as ``--skip_server_warmup`` and real
SGLang exits 2 with "unrecognized arguments". Underscores only matter for the lookups
(store_true detection, unsupported actions), which normalize ``-`` to ``_``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "config_flag_names", "merge_config"]


class ConfigError(ValueError):
    """The file or its contents are refused (SGLang raises ValueError: exit code 1)."""


def _keys(action: argparse.Action) -> set[str]:
    """Every spelling a YAML key may use for *action*, normalized to underscores."""
    names = {action.dest}
    names.update(o[2:].replace("-", "_") for o in action.option_strings if o.startswith("--"))
    return names


def _single_value(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreAction) or action.nargs is None


def _config_path(argv: list[str]) -> str | None:
    positions = [i for i, arg in enumerate(argv) if arg == "--config"]
    if len(positions) > 1:
        raise ConfigError("Multiple config files specified! Only one allowed.")
    if not positions:
        return None
    if positions[0] == len(argv) - 1:
        raise ConfigError("No config file specified after --config flag!")
    return argv[positions[0] + 1]


def _load(path_text: str) -> dict[Any, Any]:
    import yaml  # the testing extra; only needed when --config is given

    path = Path(path_text)
    if path.suffix.lower() not in {".yaml", ".yml"}:
        raise ConfigError(f"Config file must be YAML format, got: {path.suffix}")
    if not path.exists():
        raise ConfigError(f"Config file not found: {path_text}")
    with path.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("Config file must contain a dictionary at root level")
    return data


def _to_flags(parser: argparse.ArgumentParser, config: dict[Any, Any]) -> list[str]:
    actions = parser._actions
    store_true = {key for a in actions if isinstance(a, argparse._StoreTrueAction) for key in _keys(a)}
    supported = [a for a in actions if isinstance(a, argparse._StoreTrueAction) or _single_value(a)]
    supported_keys = {key for a in supported for key in _keys(a)}
    refused = {
        key: a
        for a in actions
        if a.option_strings
        and a not in supported
        and not {"--config", "--help", "-h"} & set(a.option_strings)
        for key in _keys(a)
        if key not in supported_keys
    }
    flags: list[str] = []
    for raw_key, value in config.items():
        key = str(raw_key)
        norm = key.replace("-", "_")
        if norm in refused:
            raise ConfigError(
                f"Unsupported config option '{norm}' with action '{type(refused[norm]).__name__}'"
            )
        if isinstance(value, bool):
            if norm in store_true:
                if value:
                    flags.append(f"--{key}")
            else:
                flags += [f"--{key}", str(value).lower()]
        elif isinstance(value, list):
            if value:
                flags.append(f"--{key}")
                flags += [str(item) for item in value]
        elif isinstance(value, dict):
            flags += [f"--{key}", json.dumps(value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


def merge_config(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Return ``(merged_argv, flags_from_the_file)``; *argv* unchanged without ``--config``."""
    path = _config_path(argv)
    if path is None:
        return argv, []
    flags = _to_flags(parser, _load(path))
    at = argv.index("--config")
    return flags + argv[:at] + argv[at + 2 :], flags


def config_flag_names(
    parser: argparse.ArgumentParser, unknown: Iterable[str], from_file: list[str]
) -> list[str]:
    """Config-made flags SGLang's own parser would refuse (a known flag spelled with ``_``)."""
    known = set(parser._option_string_actions)
    made = {f for f in from_file if f.startswith("--")}
    return [
        flag
        for flag in unknown
        if flag in made and "_" in flag and "--" + flag[2:].replace("_", "-") in known
    ]
