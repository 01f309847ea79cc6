"""SFT as a pretraining recipe (configs/sft_tiny.yaml): a phase over hand-picked ids and predicates, a lower learning
rate, from the ``init`` checkpoint's transformer."""

from __future__ import annotations

import pathlib

import pytest
import torch

from models.checkpoint import save_components
from models.config import ConfigError, load_config
from models.presets import build_components
from store import columns as C
from training.config import PhaseConfig, PretrainConfig

CONFIGS = pathlib.Path(__file__).resolve().parents[3] / "configs"


def test_sft_recipe_selects_the_curated_subset(tiny_checkpoint, tmp_path):
    ids_file = tmp_path / "picked.txt"
    ids_file.write_text("b\n\na\n")
    overrides = [
        f"store_dir={tmp_path / 'store'}",
        f"init={tiny_checkpoint}",
        f"output_dir={tmp_path / 'out'}",
        "phases.0.sample_ids=[c, a]",
        f"phases.0.sample_ids_file={ids_file}",
        "phases.0.num_steps=7",
        "ema_decay=0.99",
    ]
    config = load_config(PretrainConfig, CONFIGS / "sft_tiny.yaml", overrides)
    (phase,) = config.phases
    assert phase.name == "sft" and phase.num_steps == 7 and phase.min_stage == 2
    assert phase.predicates == [(C.CATEGORY, "in", ["text_rendering"]), (C.SAMPLE_ID, "in", ["a", "b", "c"])]
    # The ids live in the predicates only: the phase a worker re-validates from its dump selects the same rows and
    # needs no file.
    assert phase.sample_ids == [] and phase.sample_ids_file is None
    assert PhaseConfig.model_validate(phase.model_dump(mode="json")) == phase
    assert config.optim.lr == 1e-4 and config.ema_decay == 0.99
    assert config.preset == "tiny" and config.weights_dir is None  # the tiny checkpoint holds a transformer only
    assert pathlib.Path(config.init) == pathlib.Path(tiny_checkpoint).resolve()
    # What the training loop builds from it (training.loop): the checkpoint's transformer, not the preset's.
    other = tmp_path / "other" / "model"
    save_components(other, build_components("tiny", parts=("transformer",), seed=5))
    config = load_config(PretrainConfig, CONFIGS / "sft_tiny.yaml", [*overrides, f"init={other}"])
    start = build_components("tiny", weights_dir=config.init, parts=("transformer",)).transformer.state_dict()
    preset = build_components("tiny", parts=("transformer",)).transformer.state_dict()
    saved = build_components("tiny", parts=("transformer",), seed=5).transformer.state_dict()
    assert all(torch.equal(start[name], saved[name]) for name in saved)
    assert any(not torch.equal(start[name], preset[name]) for name in preset)

    with pytest.raises(ConfigError, match=r"phases.1: phases has elements 0..0"):
        load_config(PretrainConfig, CONFIGS / "sft_tiny.yaml", [*overrides, "phases.1.num_steps=3"])
    ids_file.write_text("\n")
    with pytest.raises(ValueError, match="lists no sample id"):
        load_config(PretrainConfig, CONFIGS / "sft_tiny.yaml", overrides[:3] + [f"phases.0.sample_ids_file={ids_file}"])
    with pytest.raises(ValueError, match="does not exist"):
        PhaseConfig(name="p", num_steps=1, sample_ids_file=str(tmp_path / "missing.txt"))
