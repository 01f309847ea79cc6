"""Job configuration: one typed, validated object per job, loaded from YAML with ``key=value`` overrides.

Unknown keys and bad values are errors that name the key (``extra="forbid"``). Overrides use dotted paths
(``model.preset=tiny``) and YAML values (``steps=8``, ``sizes=[256,640]``).
"""

from __future__ import annotations

import pathlib
from typing import TypeVar

import pydantic
import yaml


class StrictModel(pydantic.BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment too."""

    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


Config = TypeVar("Config", bound=StrictModel)


def _set_dotted(tree: dict, dotted: str, value: object) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (dotted keys for sections)")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return tree


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        elif isinstance(value, dict) and isinstance(merged.get(key), list):
            merged[key] = _merge_list(key, merged[key], value)
        else:
            merged[key] = value
    return merged


def _merge_list(name: str, base: list, update: dict) -> list:
    """``phases.0.num_steps=10``: an override of one element of a list of sections, by its index."""
    merged = list(base)
    for index, value in update.items():
        if not str(index).isdigit() or int(index) >= len(merged):
            raise ConfigError(f"override {name}.{index}: {name} has elements 0..{len(merged) - 1}")
        element = merged[int(index)]
        both_sections = isinstance(value, dict) and isinstance(element, dict)
        merged[int(index)] = _merge(element, value) if both_sections else value
    return merged


def load_config(
    cls: type[Config], path: str | pathlib.Path | None = None, overrides: list[str] | None = None
) -> Config:
    """Build ``cls`` from an optional YAML file plus overrides; raises ``ConfigError`` naming each bad key."""
    data: dict = {}
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    data = _merge(data, parse_overrides(overrides or []))
    return validate_config(cls, data)


def validate_config(cls: type[Config], data: dict, what: str | None = None) -> Config:
    """``cls`` from ``data``; a ``ConfigError`` naming every bad key (``what``: how the message names the config)."""
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"invalid {what or cls.__name__}: {problems}") from None


def read_lines(path: str | pathlib.Path, what: str) -> list[str]:
    """Non-empty stripped lines of a UTF-8 file; a missing file is an error naming ``what``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {path} does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
