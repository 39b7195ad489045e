"""Reading one YAML or JSON file that stands for ``matryoshka-st train``'s flags, with the values checked (and
converted) the way the flags would be, naming the file and the key."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import yaml

from matryoshka_st.training.arguments import ConfigError, build_parser, field_names


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a flat YAML or JSON mapping of argument names to values.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML/JSON, is not a mapping, or holds keys
            that are not arguments of ``matryoshka-st train``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist (expected a .yaml, .yml or .json file).")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read config file {str(path)!r}: {error}.") from error
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(
            f"Config file {str(path)!r} is not valid {path.suffix.lstrip('.').upper()}: {error}"
        ) from error
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"Config file {str(path)!r} must hold a mapping of argument names to values, e.g. "
            f"'learning_rate: 2.0e-5', not a {type(values).__name__}."
        )
    unknown = sorted(set(values) - field_names())
    if unknown:
        raise ConfigError(
            f"Config file {str(path)!r} has unknown keys {unknown}: use the flag names of "
            "'matryoshka-st train --help' without the leading dashes."
        )
    _check_value_types(values, path)
    return values


def _check_value_types(values: dict[str, Any], path: Path) -> None:
    """Convert strings the way the flag would (``"2"`` -> 2) and reject values of the wrong type, naming the key:
    ``HfArgumentParser.parse_dict`` takes them as they are, and they fail deep inside the trainer."""
    actions = {action.dest: action for action in build_parser()._actions}
    for key, value in values.items():
        action = actions.get(key)
        convert = getattr(action, "type", None)
        simple = getattr(convert, "__name__", "") in ("int", "float", "string_to_bool")
        if value is None or not callable(convert) or not (simple or action.choices):
            continue  # str, dicts and library-specific types are left to HfArgumentParser
        items = value if isinstance(value, list) and action.nargs in ("+", "*") else [value]
        converted = []
        for item in items:
            try:
                if isinstance(item, (list, dict)) or (isinstance(item, bool) and convert in (int, float)):
                    raise TypeError
                converted.append(convert(item) if isinstance(item, str) or convert is float else item)
                if action.choices and converted[-1] not in action.choices:
                    raise ValueError
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                expected = {"int": "int", "float": "number", "string_to_bool": "true/false"}.get(
                    getattr(convert, "__name__", ""), "value"
                )
                raise ConfigError(
                    f"Config file {str(path)!r}: {key}: {item!r} is not a valid {expected}"
                    f"{' (one of ' + ', '.join(map(str, action.choices)) + ')' if action.choices else ''}."
                ) from None
            if isinstance(item, (int, float)) and not isinstance(item, bool) and convert is int and item != int(item):
                raise ConfigError(f"Config file {str(path)!r}: {key}: {item!r} is not a whole number.")
        values[key] = converted if items is value else converted[0]
