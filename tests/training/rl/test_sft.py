"""SFT as a pretraining recipe: the curated subset, the lower learning rate, the start weights folder."""

from __future__ import annotations

import pathlib

import pytest

from models.presets import ALL_PARTS, build_components, missing_parts
from training.rl.config import SftConfig
from training.rl.sft import curated_predicates, sft_pretrain_config, start_weights


def test_sft_recipe_selects_the_curated_subset(tiny_checkpoint, tmp_path):
    ids_file = tmp_path / "picked.txt"
    ids_file.write_text("b\n\na\n")
    config = SftConfig(
        store_dir=str(tmp_path / "store"),
        checkpoint=tiny_checkpoint,
        output_dir=str(tmp_path / "out"),
        sample_ids=["c", "a"],
        sample_ids_file=str(ids_file),
        predicates=[("score_aesthetic", ">=", 5.0)],
        num_steps=7,
        lr=2e-5,
        pretrain={"ema_decay": 0.99, "optim": {"lr": 1.0, "schedule": "cosine"}},
    )
    assert curated_predicates(config) == [("score_aesthetic", ">=", 5.0), ("sample_id", "in", ["a", "b", "c"])]
    weights = start_weights(config.checkpoint, None, tmp_path / "weights")
    assert missing_parts(weights, ALL_PARTS) == []
    assert (weights / "transformer").resolve() == (pathlib.Path(tiny_checkpoint) / "transformer").resolve()
    pretrain = sft_pretrain_config(config, weights)
    (phase,) = pretrain.phases
    assert phase.num_steps == 7 and phase.predicates[-1][0] == "sample_id"
    assert pretrain.optim.lr == 2e-5 and pretrain.optim.schedule == "cosine" and pretrain.ema_decay == 0.99
    assert pretrain.weights_dir == str(weights) and pretrain.preset == "tiny"
    # The start weights load as one model: the checkpoint's transformer with the preset's other parts.
    loaded = build_components("tiny", weights_dir=weights, parts=("transformer", "vae"))
    assert loaded.vae is not None and loaded.transformer is not None

    with pytest.raises(ValueError, match="top level"):
        sft_pretrain_config(config.model_copy(update={"pretrain": {"batch_size": 2}}), weights)
    with pytest.raises(ValueError, match="curated subset"):
        SftConfig(store_dir="s", checkpoint=tiny_checkpoint, num_steps=1)
