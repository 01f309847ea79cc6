"""Smoke path of the demo job: generation only (the producer step is covered by tests/pipelines/test_curation.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def test_demo_writes_png(tmp_path):
    from jobs.demo import main

    path = main(
        [
            f"output_dir={tmp_path}",
            "num_samples=0",
            "generation.num_steps=2",
            "generation.height=32",
            "generation.width=48",
            'generation.prompts=["a", "b", "c"]',
        ]
    )
    assert path == tmp_path / "samples.png"
    image = np.asarray(Image.open(path))
    assert image.ndim == 3 and image.shape[2] == 3
    # Three 32x48 images side by side with 2-px gaps and a caption strip above.
    assert image.shape[1] == 3 * (48 + 2) and image.shape[0] > 32
    assert image.std() > 10  # not a blank canvas
