"""jobs/rl.py end to end on Ray, from the shared pretraining run (``pretrain_run``, tests/conftest.py): SFT (Ray
Train), DPO (pairs built by Ray Data from a reward and from a human label file, then two FSDP workers) and GRPO
(rollout actors beside two FSDP workers, LoRA, KL)."""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.rl import main
from models.checkpoint import load_checkpoint, read_metadata
from models.presets import ALL_PARTS, build_components
from store import columns as C
from store.reader import read_table
from training.post_training.pairs import read_pairs

pytestmark = pytest.mark.slow
CONFIGS = pathlib.Path(__file__).resolve().parents[3] / "configs"
# DPO (a full fine-tune: its reference is a frozen copy) and GRPO (LoRA: adapters gathered for each push, merged in
# the export) train on two FSDP workers, the policy and reference sharded between them.
TWO_FSDP_WORKERS = ("num_workers=2", "cpus_per_worker=0.5", "parallel.strategy=fsdp")


def _rows(path: str | pathlib.Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _check_outputs(summary: dict, *curves: str) -> None:
    checkpoint = pathlib.Path(summary["checkpoint"])
    # A complete pipeline folder: the trained transformer, the frozen parts linked from the start checkpoint's base.
    assert read_metadata(checkpoint)["parts"] == list(ALL_PARTS)
    assert all((checkpoint / part).is_symlink() for part in ALL_PARTS if part != "transformer")
    # The tiny preset's architecture, with trained weights (not the preset's initialisation).
    trained = load_checkpoint(checkpoint, parts=("transformer",)).transformer.state_dict()
    initial = build_components("tiny", parts=("transformer",)).transformer.state_dict()
    assert trained.keys() == initial.keys() and all(trained[k].shape == initial[k].shape for k in initial)
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)
    for key in curves:
        image = np.asarray(Image.open(summary[key]))
        assert image.ndim == 3 and image.std() > 1, key


def test_sft_from_pretraining_on_picked_samples(pretrain_run, tiny_store, tmp_path):
    """SFT is a pretraining recipe (configs/sft_tiny.yaml) run by jobs/pretrain.py: one phase over hand-picked ids
    from the pretraining run's checkpoint; a selection smaller than a batch is refused before any worker starts."""
    from jobs.pretrain import main as pretrain
    from models.config import load_config
    from training.config import PretrainConfig
    from training.pretrain import count_phase_rows

    picked = read_table(tiny_store, 256).column(C.SAMPLE_ID).to_pylist()[:8]
    (tmp_path / "picked.txt").write_text("\n".join(picked[4:]) + "\n")
    overrides = [
        f"store_dir={tiny_store}",
        f"init={pretrain_run}",
        f"output_dir={tmp_path}",
        "phases.0.predicates=[]",
        "phases.0.min_stage=0",
        f"phases.0.sample_ids={json.dumps(picked[:4])}",
        f"phases.0.sample_ids_file={tmp_path / 'picked.txt'}",
        "samples.num_steps=2",
    ]
    config = load_config(PretrainConfig, CONFIGS / "sft_tiny.yaml", overrides)
    with pytest.raises(ValueError, match="phase 'sft' selects 0 rows .* fewer than batch_size=4"):
        count_phase_rows(config, config.phases[0].model_copy(update={"predicates": [(C.SAMPLE_ID, "in", ["none"])]}))
    summary = pretrain([f"--config={CONFIGS / 'sft_tiny.yaml'}", "--max-steps=3", *overrides])
    assert summary["phase_rows"] == {"sft": 8}
    _check_outputs(summary, "loss_curve")
    assert [row["phase"] for row in _rows(summary["metrics"])][-1] == "sft"


def test_dpo_from_reward_and_label_pairs(pretrain_run, tmp_path):
    rng = np.random.default_rng(0)
    labels = []
    for index in range(2):
        for side in ("winner", "loser"):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{index}{side}.png")
        labels.append({"prompt": f"a photo {index}", "winner": f"{index}winner.png", "loser": f"{index}loser.png"})
    (tmp_path / "labels.jsonl").write_text("\n".join(json.dumps(row) for row in labels))
    prompts = ["a red apple", "a blue sky", "a green field", "a yellow taxi", "a pink cake", "a black cat"]
    summary = main(
        [
            "--algo=dpo",
            f"--config={CONFIGS / 'rl_dpo_tiny.yaml'}",
            "--max-steps=3",
            f"init={pretrain_run}",
            f"output_dir={tmp_path}",
            f"pairs_dir={tmp_path / 'pairs'}",
            "resolution=64",
            f"from_reward.prompts={json.dumps(prompts)}",
            "from_reward.images_per_prompt=3",
            "from_reward.num_steps=3",
            f"from_labels.path={tmp_path / 'labels.jsonl'}",
            "batch_size=2",
            "eval_fraction=0.3",
            *TWO_FSDP_WORKERS,
        ]
    )
    sources = read_pairs(tmp_path / "pairs", 64).column(C.PREFERENCE_SOURCE).to_pylist()
    assert sources.count("human:labels.jsonl") == 2 and sources.count("reward:mean_color") == summary["num_pairs"] - 2
    _check_outputs(summary, "loss_curve", "reward_curve")
    assert [int(row["step"]) for row in _rows(summary["metrics"])] == [3]  # log_every 5: the last step is logged
    assert summary["final"]["step"] == 3 and "margin" in summary["final"] and "accuracy" in summary["final"]


def test_grpo_with_rollout_actors_lora_and_kl(pretrain_run, tmp_path):
    summary = main(
        [
            "--algo=grpo",
            f"--config={CONFIGS / 'rl_grpo_tiny.yaml'}",
            "--max-steps=2",
            f"init={pretrain_run}",
            f"output_dir={tmp_path}",
            "group_size=4",
            "height=32",
            "width=32",
            "num_steps=4",
            "train_steps=2",
            "eval_images_per_prompt=1",
            "eval_prompts=1",
            "prompts_per_iteration=1",
            "max_rollout_rounds=2",  # every group of a continuous reward differs: one round suffices
            *TWO_FSDP_WORKERS,
        ]
    )
    _check_outputs(summary, "reward_curve", "eval_curve")
    rows = _rows(summary["metrics"])
    assert [int(row["step"]) for row in rows] == [1, 2]
    # The policy has left the frozen reference after its first update, so the KL term is positive, not 0 as it would
    # be if the reference were the policy itself.
    assert all(float(row["kl"]) > 0 and float(row["actor_rollout_s"]) > 0 for row in rows)
    assert all(float(row["informative_groups"]) == 1 and float(row["rollout_rounds"]) == 1 for row in rows)
    evaluations = _rows(pathlib.Path(summary["metrics"]).parent / "eval.csv")
    assert [int(row["step"]) for row in evaluations] == [0, 2]
    assert all(int(row["prompts"]) == 1 for row in evaluations)  # eval_prompts: the first of the config's prompts
    # LoRA: the merged checkpoint differs from the start, by the trained adapters only.
    start_folder = json.loads((pathlib.Path(pretrain_run) / "summary.json").read_text())["checkpoint"]
    start = load_checkpoint(start_folder, parts=("transformer",))
    trained = load_checkpoint(summary["checkpoint"], parts=("transformer",)).transformer.state_dict()
    changed = [name for name, value in start.transformer.state_dict().items() if not value.equal(trained[name])]
    assert changed and all(name.split(".")[-2] in ("to_q", "to_k", "to_v", "0") for name in changed)
    # The adapter alone too, in diffusers' format.
    from models.lora import read_adapter

    tensors, _ = read_adapter(summary["adapter"])
    assert tensors and all(key.startswith("transformer.") and ".lora_" in key for key in tensors)
