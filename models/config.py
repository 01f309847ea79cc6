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
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
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
