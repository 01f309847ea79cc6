"""Preference pairs: built from a reward and from a human label file, stored like other samples, read back."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from store import columns as C
from store.writer import commit_table
from training.post_training.pairs import (
    LabelPairStage,
    RewardPairStage,
    num_batches,
    pair_batches,
    read_label_file,
    read_pairs,
    split_pairs,
    unit_hash,
)

RESOLUTION = 64


def test_reward_pairs_keep_best_and_worst(tiny_checkpoint, tmp_path):
    settings = {
        "prompts": [],
        "images_per_prompt": 3,
        "rewards": [{"kind": "mean_color"}],
        "num_steps": 3,
        "true_cfg_scale": 1.0,
    }
    stage = RewardPairStage(tiny_checkpoint, None, settings, RESOLUTION)
    table = stage({"prompt": np.array(["a red square", "a blue square"], dtype=object), "index": np.array([0, 1])})
    assert table.num_rows == 2
    assert set(table.column(C.PREFERENCE_SOURCE).to_pylist()) == {"reward:mean_color"}
    winners, losers = table.column(C.REWARD_WINNER).to_numpy(), table.column(C.REWARD_LOSER).to_numpy()
    assert np.all(winners > losers)
    commit_table(tmp_path, table)
    commit_table(tmp_path, table)  # a retried write commits nothing twice
    pairs = read_pairs(tmp_path, RESOLUTION)
    assert pairs.num_rows == 2
    (batch,) = list(pair_batches(pairs, 2, RESOLUTION, rng=np.random.default_rng(0)))
    assert batch.winner.shape == batch.loser.shape == (2, 16, 8, 8)
    assert not np.allclose(batch.winner.numpy(), batch.loser.numpy())
    assert batch.prompt.embeds.shape[:2] == batch.prompt.mask.shape


def test_label_pairs_from_a_jsonl_file(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for index in range(6):
        for side in ("winner", "loser"):
            pixels = rng.integers(0, 255, (80, 84, 3), dtype=np.uint8)  # nearest the 1x1 bucket: 64x64 at 64
            Image.fromarray(pixels).save(tmp_path / f"{index}-{side}.png")
        rows.append({"prompt": f"prompt {index}", "winner": f"{index}-winner.png", "loser": f"{index}-loser.png"})
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    items = read_label_file(labels)
    assert items[0]["winner"] == str(tmp_path / "0-winner.png")

    stage = LabelPairStage("tiny", None, RESOLUTION, source="human:labels.jsonl")
    batch = {key: np.array([item[key] for item in items], dtype=object) for key in ("prompt", "winner", "loser")}
    store = tmp_path / "pairs"
    commit_table(store, stage(batch))
    pairs = read_pairs(store, RESOLUTION)
    assert pairs.num_rows == 6 and set(pairs.column(C.PREFERENCE_SOURCE).to_pylist()) == {"human:labels.jsonl"}
    train, held = split_pairs(pairs, 0.5, seed=0)
    ids = pairs.column("sample_id").to_pylist()
    assert set(held.column("sample_id").to_pylist()) == {pid for pid in ids if unit_hash(pid) < 0.5}
    assert train.num_rows + held.num_rows == 6 and 0 < held.num_rows < 6
    # A pair's id names its images, not their folder: the same labels read from a copy are the same pairs.
    copy = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(tmp_path, copy, ignore=shutil.ignore_patterns("pairs"))
    copied = read_label_file(copy / "labels.jsonl")
    assert copied[0]["winner"] == str(copy / "0-winner.png")
    again = stage(
        {key: np.array([item[key] for item in copied], dtype=object) for key in ("prompt", "winner", "loser")}
    )
    assert sorted(again.column("sample_id").to_pylist()) == sorted(ids)
    assert num_batches(train, 2) == train.num_rows // 2
    decoded = list(pair_batches(pairs, 4, RESOLUTION, rng=np.random.default_rng(1), drop_last=False))
    assert sorted(len(b.winner) for b in decoded) == [2, 4] and decoded[0].winner.shape[1:] == (16, 8, 8)

    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x", "winner": "a.png"}) + "\n")
    with pytest.raises(ValueError, match="lacks"):
        read_label_file(tmp_path / "bad.jsonl")
