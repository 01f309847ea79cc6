"""The demo's generation step from a trained (here: freshly saved) checkpoint; the full flow runs in `make demo`."""

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
