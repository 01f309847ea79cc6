"""Image editing (TI2I): our edit path against ``diffusers.QwenImageEditPipeline`` built from the same modules."""

from __future__ import annotations

import pytest
import torch

from models.generation import DIFFUSERS_EDIT_AREA, TextToImage, edit_source_size
from models.packing import img_shapes, unpack_latents

from ..fixtures import structured_picture


def test_edit_source_size_matches_diffusers():
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

    for width, height in [(640, 384), (1024, 1024), (300, 977), (1920, 1080)]:
        assert (
            edit_source_size(DIFFUSERS_EDIT_AREA, width, height)
            == calculate_dimensions(DIFFUSERS_EDIT_AREA, width / height)[:2]
        )


def test_edit_shapes_put_the_source_at_frame_one():
    assert img_shapes(2, 8, 12, source=(16, 10)) == [[(1, 4, 6), (1, 8, 5)]] * 2


# The pipeline resizes every source to 1024x1024 pixels of area; on CPU the tiny VAE and vision tower take a
# minute at that size, so the test has the pipeline resize to this area instead (and checks that it asked for 1024^2).
TEST_SOURCE_AREA = 256 * 256


def test_edit_matches_diffusers_pipeline(tiny_components, monkeypatch):
    """Same latents as ``QwenImageEditPipeline`` (bit for bit, float32), true CFG on; the source
    image is resized (Lanczos, aspect kept, sides of 32) and conditions both the VAE sequence and the vision tower."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit
    from PIL import Image

    asked: list[int] = []
    original = pipeline_qwenimage_edit.calculate_dimensions

    def smaller(target_area, ratio):
        asked.append(target_area)
        return original(TEST_SOURCE_AREA, ratio)

    monkeypatch.setattr(pipeline_qwenimage_edit, "calculate_dimensions", smaller)
    source = structured_picture(320, 192)
    height, width, steps, prompt = 64, 96, 3, "make the block blue"
    reference = tiny_components.diffusers_edit_pipeline()(
        image=Image.fromarray(source),
        prompt=prompt,
        negative_prompt=" ",
        height=height,
        width=width,
        num_inference_steps=steps,
        true_cfg_scale=4.0,
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
    ).images
    reference = unpack_latents(reference, height // 8, width // 8)
    assert asked == [DIFFUSERS_EDIT_AREA]

    editor = TextToImage(tiny_components)
    kwargs = dict(height=height, width=width, num_steps=steps, true_cfg_scale=4.0, source_area=TEST_SOURCE_AREA)
    ours = editor.edit_latents([prompt], [source], generator=torch.Generator().manual_seed(5), **kwargs)
    assert ours.shape == reference.shape == (1, 16, height // 8, width // 8)
    assert torch.equal(ours, reference)  # bit for bit

    # The source image must matter, or the comparison above says nothing about the edit conditioning.
    other = editor.edit_latents(
        [prompt], [structured_picture(320, 192, seed=1)], generator=torch.Generator().manual_seed(5), **kwargs
    )
    assert (other - ours).abs().max().item() > 1e-3


def test_edit_rejects_mismatched_inputs(tiny_components):
    editor = TextToImage(tiny_components)
    image = structured_picture(64, 64)
    with pytest.raises(ValueError, match="source images for"):
        editor.edit_latents(["a", "b"], [image], height=32, width=32, num_steps=1)
    with pytest.raises(ValueError, match="RGB uint8"):
        editor.edit_latents(["a"], [image[..., 0]], height=32, width=32, num_steps=1)
    with pytest.raises(ValueError, match="share an aspect ratio"):
        editor.edit_latents(["a", "b"], [image, structured_picture(128, 32)], height=32, width=32, num_steps=1)
