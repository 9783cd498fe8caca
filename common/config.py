"""Configuration declared as dataclasses and built from plain (YAML) data: unknown keys and wrong types are errors
that name the key, so a typo never silently falls back to a default."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


def build_dataclass(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from plain data, checking keys and types."""
    if dataclasses.is_dataclass(cls):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(fields)
        if unknown:
            raise ConfigError(f"{where or 'config'}: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
        kwargs = {k: build_dataclass(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{where or 'config'}: {e}") from e
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return build_dataclass(inner[0], data, where)
    if origin is list:
        if not isinstance(data, list):
            raise ConfigError(f"{where}: expected a list, got {type(data).__name__}")
        return [build_dataclass(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        return dict(data)
    if cls is Any:
        return data
    if cls is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if not isinstance(data, cls) or (cls is int and isinstance(data, bool)):
        raise ConfigError(f"{where}: expected {cls.__name__}, got {data!r}")
    return data


def read_yaml_mapping(path: str | os.PathLike | None, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of a YAML file ({} for None), or a ConfigError that names the file and the problem."""
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p}: top level must be a mapping")
    return data
