"""SFT as a pretraining recipe: the curated subset, the lower learning rate, the checkpoint's transformer."""

from __future__ import annotations

import pathlib

import pytest
import torch

from models.checkpoint import save_components
from models.presets import build_components
from training.post_training.config import SftConfig
from training.post_training.sft import curated_predicates, sft_pretrain_config


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
    pretrain = sft_pretrain_config(config)
    (phase,) = pretrain.phases
    assert phase.num_steps == 7 and phase.predicates[-1][0] == "sample_id"
    assert pretrain.optim.lr == 2e-5 and pretrain.optim.schedule == "cosine" and pretrain.ema_decay == 0.99
    assert pretrain.preset == "tiny" and pretrain.weights_dir is None
    assert pathlib.Path(pretrain.init) == pathlib.Path(tiny_checkpoint).resolve()
    # What the training loop builds from it (training.loop): the checkpoint's transformer, not the preset's.
    other = tmp_path / "other" / "model"
    save_components(other, build_components("tiny", parts=("transformer",), seed=5))
    pretrain = sft_pretrain_config(config.model_copy(update={"init": str(other)}))
    start = build_components("tiny", weights_dir=pretrain.init, parts=("transformer",)).transformer
    preset = build_components("tiny", parts=("transformer",)).transformer
    saved = build_components("tiny", parts=("transformer",), seed=5).transformer
    pairs = list(zip(start.state_dict().values(), saved.state_dict().values(), strict=True))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert any(
        not torch.equal(a, b) for a, b in zip(start.state_dict().values(), preset.state_dict().values(), strict=True)
    )

    with pytest.raises(ValueError, match="top level"):
        sft_pretrain_config(config.model_copy(update={"pretrain": {"batch_size": 2}}))
    with pytest.raises(ValueError, match="curated subset"):
        SftConfig(store_dir="s", checkpoint=tiny_checkpoint, num_steps=1)
