"""Job config loading: YAML plus dotted overrides; unknown keys and bad values name the key."""

from __future__ import annotations

import pytest

from models.config import ConfigError, StrictModel, load_config


class Inner(StrictModel):
    steps: int = 4
    scale: float = 1.0


class Outer(StrictModel):
    name: str = "demo"
    inner: Inner = Inner()


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: run\ninner:\n  steps: 8\n")
    config = load_config(Outer, path, ["inner.scale=2.5"])
    assert config == Outer(name="run", inner=Inner(steps=8, scale=2.5))


def test_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"inner\.stpes"):
        load_config(Outer, None, ["inner.stpes=3"])
    with pytest.raises(ConfigError, match=r"inner\.steps"):
        load_config(Outer, None, ["inner.steps=many"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, None, ["inner.steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
