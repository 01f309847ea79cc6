"""Multi-image editing (Edit-Plus): our ``template="edit_plus"`` path against ``diffusers.QwenImageEditPlusPipeline``
built from the same modules."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from models.condition_encoder import EDIT_PLUS_TEMPLATE, EDIT_TEMPLATE, PICTURE_MARKER
from models.generation import DIFFUSERS_EDIT_AREA, EDIT_PLUS_VISION_AREA, TextToImage, edit_source_size
from models.packing import img_shapes, unpack_latents

from ..fixtures import structured_picture

# The pipeline VAE-encodes every reference at 1024x1024 pixels of area and shows it to the vision tower at 384x384;
# on CPU the tiny VAE takes seconds per image even at 256^2, so the test has the pipeline use these areas instead
# (and checks that it asked for the real ones).
TEST_VAE_AREA = 64 * 64
TEST_VISION_AREA = 64 * 64


def test_edit_plus_template_matches_diffusers(tiny_components):
    pipe = tiny_components.diffusers_edit_plus_pipeline()
    assert EDIT_PLUS_TEMPLATE.text == pipe.prompt_template_encode
    assert EDIT_PLUS_TEMPLATE.drop == pipe.prompt_template_encode_start_idx == EDIT_TEMPLATE.drop
    # The same system prompt as Qwen-Image-Edit: the drop of 64 ends where "Picture 1: " begins.
    assert EDIT_PLUS_TEMPLATE.prefix == EDIT_TEMPLATE.prefix
    assert len(tiny_components.tokenizer(EDIT_PLUS_TEMPLATE.prefix).input_ids) == 64
    assert PICTURE_MARKER.format(2) == "Picture 2: <|vision_start|><|image_pad|><|vision_end|>"


def test_reference_frames():
    assert img_shapes(1, 8, 12, sources=[(16, 10), (8, 8)]) == [[(1, 4, 6), (1, 8, 5), (1, 4, 4)]]
    with pytest.raises(ValueError, match="not both"):
        img_shapes(1, 8, 8, (8, 8), sources=[(8, 8)])


def _with_zero_cond_t(components):
    """The tiny preset with a transformer configured as Qwen-Image-Edit-2511's is (``zero_cond_t``: the reference
    tokens are modulated at timestep 0), seeded as the preset seeds its own."""
    import dataclasses

    from diffusers import QwenImageTransformer2DModel

    from models.presets import TINY_TRANSFORMER_CONFIG

    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformer = QwenImageTransformer2DModel(**TINY_TRANSFORMER_CONFIG, zero_cond_t=True).eval()
    return dataclasses.replace(components, transformer=transformer.requires_grad_(False))


@pytest.mark.parametrize("variant", ["2509", "2511"])
def test_edit_plus_matches_diffusers(tiny_components, monkeypatch, variant):
    """Two references of different aspect ratios: same latents as ``QwenImageEditPlusPipeline`` (float32, true CFG
    on), bit for bit. Each reference is VAE-encoded on its own at its own frame, and both reach the vision tower.
    2511: the transformer's ``zero_cond_t`` reads which tokens are references from the rotary grids we pass."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    components = tiny_components if variant == "2509" else _with_zero_cond_t(tiny_components)

    assert (plus.VAE_IMAGE_SIZE, plus.CONDITION_IMAGE_SIZE) == (DIFFUSERS_EDIT_AREA, EDIT_PLUS_VISION_AREA)
    asked: list[int] = []
    original = plus.calculate_dimensions
    smaller = {DIFFUSERS_EDIT_AREA: TEST_VAE_AREA, EDIT_PLUS_VISION_AREA: TEST_VISION_AREA}

    def shrunk(target_area, ratio):
        asked.append(target_area)
        return original(smaller[target_area], ratio)

    monkeypatch.setattr(plus, "calculate_dimensions", shrunk)
    first, second = structured_picture(320, 192, seed=0), structured_picture(160, 224, seed=1)
    # The sizes our sizing rule gives match the pipeline's (checked at the real areas, for both references).
    for picture in (first, second):
        ratio = picture.shape[1] / picture.shape[0]
        for area in (DIFFUSERS_EDIT_AREA, EDIT_PLUS_VISION_AREA, TEST_VAE_AREA):
            assert edit_source_size(area, picture.shape[1], picture.shape[0]) == original(area, ratio)
    height, width, steps, prompt = 64, 96, 3, "put the block of picture 2 on picture 1"
    reference = components.diffusers_edit_plus_pipeline()(
        image=[Image.fromarray(first), Image.fromarray(second)],
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
    # The default output size (from the last reference), then each reference's vision and VAE sizes.
    assert asked == [DIFFUSERS_EDIT_AREA] + [EDIT_PLUS_VISION_AREA, DIFFUSERS_EDIT_AREA] * 2

    editor = TextToImage(components)
    kwargs = dict(
        height=height,
        width=width,
        num_steps=steps,
        true_cfg_scale=4.0,
        source_area=TEST_VAE_AREA,
        vision_area=TEST_VISION_AREA,
        template="edit_plus",
    )
    ours = editor.edit_latents([prompt], [[first, second]], generator=torch.Generator().manual_seed(5), **kwargs)
    assert ours.shape == reference.shape == (1, 16, height // 8, width // 8)
    assert torch.equal(ours, reference)  # bit for bit

    # The second reference must matter, or the comparison above says nothing about multi-image conditioning.
    other = editor.edit_latents(
        [prompt], [[first, structured_picture(160, 224, seed=2)]], generator=torch.Generator().manual_seed(5), **kwargs
    )
    assert (other - ours).abs().max().item() > 1e-3
    if variant == "2511":  # and zero_cond_t must change the model, or this case repeats the other
        plain = TextToImage(tiny_components).edit_latents(
            [prompt], [[first, second]], generator=torch.Generator().manual_seed(5), **kwargs
        )
        assert (plain - ours).abs().max().item() > 1e-3


def test_edit_plus_rejects_bad_references(tiny_components):
    editor = TextToImage(tiny_components)
    image = structured_picture(64, 64, seed=0)
    kwargs = dict(height=32, width=32, num_steps=1, template="edit_plus", source_area=32 * 32, vision_area=56 * 56)
    with pytest.raises(ValueError, match="as many reference images"):
        editor.edit_latents(["a", "b"], [[image], [image, image]], **kwargs)
    with pytest.raises(ValueError, match="at least one reference"):
        editor.edit_latents(["a"], [[]], **kwargs)
    with pytest.raises(ValueError, match="RGB uint8"):
        editor.edit_latents(["a"], [[image, image[..., 0]]], **kwargs)
    with pytest.raises(ValueError, match="share an aspect ratio"):
        editor.edit_latents(["a", "b"], [[image], [structured_picture(128, 32, seed=0)]], **kwargs)
    with pytest.raises(ValueError, match="template must be"):
        editor.edit_latents(["a"], [image], height=32, width=32, num_steps=1, template="plus")
