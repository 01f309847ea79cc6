"""jobs/finetune.py end to end on Ray: a folder of a user's images with sidecar captions -> curation -> latent store
-> LoRA training from the released layout -> the adapter in diffusers' format, sample grids and a loss curve."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from jobs.finetune import main
from models.lora import read_adapter
from pipelines.synth.sample_corpus import photo_like
from store.reader import read_table
from training.metrics import read_metrics

pytestmark = pytest.mark.slow
CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def test_finetune_job_on_image_folder(ray_session, released_folder, tmp_path):
    images = tmp_path / "my_images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for index in range(12):
        Image.fromarray(photo_like(rng, 256, 320)).save(images / f"{index:02d}.jpg", quality=92)
        (images / f"{index:02d}.txt").write_text(f"a photo of my garden, view {index}", encoding="utf-8")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # a bad file is a recorded drop, not a crash
    (images / "broken.txt").write_text("broken")
    folder = {"path": str(images), "caption_prefix": "sks garden, ", "repeats": 1}
    summary = main(
        [
            f"--config={CONFIGS / 'lora_tiny.yaml'}",
            f"images={json.dumps([folder])}",
            f"init={released_folder}",
            f"output_dir={tmp_path / 'out'}",
            "num_steps=20",
            "checkpoint_every=10",
        ]
    )
    # The adapter alone (no merged copy of the model asked for), in diffusers' format, on the released base.
    assert summary["checkpoint"] is None and summary["base"] == str(pathlib.Path(released_folder).resolve())
    tensors, metadata = read_adapter(summary["adapter"])
    assert tensors and all(key.startswith("transformer.") and ".lora_" in key for key in tensors)
    assert any(float(value.abs().max()) > 0 for key, value in tensors.items() if ".lora_B." in key)  # it trained
    # The funnel: twelve images kept, the broken file dropped with its reason.
    funnel = json.loads((pathlib.Path(summary["funnel"]).parent / "funnel.json").read_text())
    assert pathlib.Path(summary["funnel"]).is_file() and "12" in json.dumps(funnel)
    rows = read_metrics(summary["metrics"])
    assert int(rows[-1]["step"]) == 20 and all(row["phase"] == "finetune" for row in rows)
    (grid,) = pathlib.Path(summary["samples"]).glob("*.png")
    assert np.asarray(Image.open(grid)).std() > 1 and np.asarray(Image.open(summary["loss_curve"])).std() > 1
    # The trigger word leads every stored caption (and so the sample grid's prompts, the data's first captions).
    captions = read_table(summary["store"], 128).column("caption").to_pylist()
    assert len(captions) == 12 and all(caption.startswith("sks garden, a photo of my garden") for caption in captions)
