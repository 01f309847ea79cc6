"""open_clip wrapper: tiny random model offline, local weights files, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models.clip import ClipConfig, ClipModel


def test_tiny_clip_embeddings_and_local_weights(tmp_path):
    model = ClipModel(ClipConfig(seed=1))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (90, 70, 3), dtype=np.uint8) for _ in range(3)]
    texts = ["a red cat", "a blue car", "一座山"]
    image_embeds, text_embeds = model.encode_images(images), model.encode_texts(texts)
    assert image_embeds.shape == text_embeds.shape == (3, 32)
    torch.testing.assert_close(image_embeds.norm(dim=-1), torch.ones(3))
    similarity = model.similarity(images, texts)
    np.testing.assert_allclose(similarity, (image_embeds * text_embeds).sum(-1).numpy(), atol=1e-6)

    # Weights written to a local file load back into the same embeddings (the production path).
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.model.state_dict().items()}, str(path))
    reloaded = ClipModel(ClipConfig(weights_path=str(path), seed=99))
    torch.testing.assert_close(reloaded.encode_texts(texts), text_embeds)


def test_clip_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="needs weights_path"):
        ClipModel(ClipConfig(model_name="ViT-B-32"))
    with pytest.raises(ValueError, match="does not exist"):
        ClipModel(ClipConfig(model_name="ViT-B-32", weights_path=str(tmp_path / "none.safetensors")))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipModel(ClipConfig(model_name="ViT-Z-99"))
