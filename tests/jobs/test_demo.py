"""The demo's parts that run in seconds: its choice of nano VAE, and sampling a saved checkpoint into a grid. The full
flow runs in `make demo` and `benchmarks/learning.py`."""

from __future__ import annotations

import numpy as np

from models.checkpoint import save_components
from models.generation import TextToImage
from models.imageio import save_png, to_grid
from models.presets import Components


def test_checkpoint_to_sample_grid(tiny_components, tmp_path):
    folder = save_components(tmp_path / "ckpt", Components(preset="tiny", transformer=tiny_components.transformer))
    images = TextToImage.from_checkpoint(folder)(["a", "b", "c"], height=32, width=48, num_steps=2, seeds=[0, 1, 2])
    path = save_png(to_grid(images, columns=3, labels=["a", "b", "c"]), tmp_path / "samples.png")
    from PIL import Image

    image = np.asarray(Image.open(path))
    assert image.shape[1] == 3 * (48 + 2) and image.shape[0] > 32 and image.std() > 10


def test_demo_uses_the_shipped_nano_vae_else_a_cached_one(tmp_path, monkeypatch):
    from jobs.demo import ensure_nano_vae
    from models.presets import NANO_VAE_ENV, NANO_VAE_FOLDER

    monkeypatch.delenv(NANO_VAE_ENV, raising=False)
    assert ensure_nano_vae(tmp_path, "unused.yaml") == NANO_VAE_FOLDER
    # No VAE where the preset looks: a VAE trained by an earlier demo run is found in the output and named for the
    # jobs the demo starts (the environment their Ray workers inherit); nothing is trained again.
    monkeypatch.setenv(NANO_VAE_ENV, str(tmp_path / "nowhere"))
    cached = tmp_path / "out" / "nano_vae" / "nano-vae" / "exports" / "step0004000-vae" / "vae"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    assert ensure_nano_vae(tmp_path / "out", "unused.yaml") == cached
    import os

    assert os.environ[NANO_VAE_ENV] == str(cached)
