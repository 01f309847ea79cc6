"""Smoke path of the demo job: it writes a PNG of the requested grid."""

from __future__ import annotations

import numpy as np
from PIL import Image


def test_demo_writes_png(tmp_path):
    from jobs.demo import main

    path = main([f"output={tmp_path / 'demo.png'}", "num_steps=2", "height=32", "width=48", 'prompts=["a", "b", "c"]'])
    image = np.asarray(Image.open(path))
    assert image.ndim == 3 and image.shape[2] == 3
    # Three 32x48 images side by side with 2-px gaps and a caption strip above.
    assert image.shape[1] == 3 * (48 + 2) and image.shape[0] > 32
    assert image.std() > 10  # not a blank canvas
