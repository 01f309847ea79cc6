"""Image to image and inpainting: our paths against ``diffusers.QwenImageImg2ImgPipeline`` and
``QwenImageInpaintPipeline`` built from the same modules, and the mask conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.generation import DEFAULT_STRENGTH, TextToImage, inpaint_mask, latent_mask
from models.packing import unpack_latents
from models.sampler import strength_start

from ..fixtures import structured_picture

HEIGHT, WIDTH = 64, 64


def _alpha(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Opaque everywhere but a transparent box (left, top, right, bottom): the region to regenerate."""
    alpha = np.full((height, width), 255, dtype=np.uint8)
    left, top, right, bottom = box
    alpha[top:bottom, left:right] = 0
    return alpha


@pytest.mark.parametrize("num_steps", [2, 3, 4, 10, 50])
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.6, 0.75, 0.99, 1.0])
def test_strength_start_matches_diffusers(tiny_components, num_steps, strength):
    pipe = tiny_components.diffusers_img2img_pipeline()
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=0.5)
    _, steps = pipe.get_timesteps(num_steps, strength, "cpu")
    if steps < 1:
        with pytest.raises(ValueError, match="no step"):
            strength_start(num_steps, strength)
    else:
        assert strength_start(num_steps, strength) == num_steps - steps


def test_strength_outside_range_is_refused(tiny_components):
    editor = TextToImage(tiny_components)
    image = structured_picture(64, 64, seed=0)
    for strength in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            editor.image_to_image_latents(["a"], [image], height=HEIGHT, width=WIDTH, num_steps=2, strength=strength)


def test_img2img_matches_diffusers(tiny_components):
    """Same latents as ``QwenImageImg2ImgPipeline`` (float32, true CFG on), bit for bit: the image resized to the
    output, a posterior sample drawn with the seed, noised to the level where ``strength`` starts the schedule."""
    source = structured_picture(96, 80, seed=0)  # resized to 64x64, aspect ratio not kept, as diffusers does
    steps, prompt = 4, "a watercolour of the same scene"
    assert DEFAULT_STRENGTH == 0.6 and strength_start(steps, DEFAULT_STRENGTH) == 1  # three of the four steps run
    reference = tiny_components.diffusers_img2img_pipeline()(
        prompt=prompt,
        negative_prompt=" ",
        image=Image.fromarray(source),
        height=HEIGHT,
        width=WIDTH,
        strength=DEFAULT_STRENGTH,
        num_inference_steps=steps,
        true_cfg_scale=4.0,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).images
    reference = unpack_latents(reference, HEIGHT // 8, WIDTH // 8)

    editor = TextToImage(tiny_components)
    kwargs = dict(height=HEIGHT, width=WIDTH, num_steps=steps, true_cfg_scale=4.0)
    ours = editor.image_to_image_latents([prompt], [source], generator=torch.Generator().manual_seed(3), **kwargs)
    assert ours.shape == reference.shape == (1, 16, HEIGHT // 8, WIDTH // 8)
    assert torch.equal(ours, reference)  # bit for bit

    # The strength and the image must both matter, or the comparison above says nothing about them.
    stronger = editor.image_to_image_latents(
        [prompt], [source], strength=0.9, generator=torch.Generator().manual_seed(3), **kwargs
    )
    assert (stronger - ours).abs().max().item() > 1e-3
    other = editor.image_to_image_latents(
        [prompt], [structured_picture(96, 80, seed=1)], generator=torch.Generator().manual_seed(3), **kwargs
    )
    assert (other - ours).abs().max().item() > 1e-3


def test_inpaint_matches_diffusers(tiny_components):
    """Same latents as ``QwenImageInpaintPipeline`` (float32, true CFG on), bit for bit, for the mask given three
    ways: the image's own alpha channel (transparent = regenerate), a separate RGBA mask read the same way, and a
    separate greyscale mask in diffusers' convention (white = regenerate), which is what the pipeline is given."""
    picture = structured_picture(96, 96, seed=0)
    alpha = _alpha(96, 96, box=(16, 24, 72, 64))
    repaint = Image.fromarray(255 - alpha)  # diffusers: white = regenerate
    steps, strength, prompt = 4, 0.75, "a red balloon"
    reference = tiny_components.diffusers_inpaint_pipeline()(
        prompt=prompt,
        negative_prompt=" ",
        image=Image.fromarray(picture),
        mask_image=repaint,
        height=HEIGHT,
        width=WIDTH,
        strength=strength,
        num_inference_steps=steps,
        true_cfg_scale=4.0,
        generator=torch.Generator().manual_seed(4),
        output_type="latent",
    ).images
    reference = unpack_latents(reference, HEIGHT // 8, WIDTH // 8)

    editor = TextToImage(tiny_components)
    kwargs = dict(height=HEIGHT, width=WIDTH, num_steps=steps, strength=strength, true_cfg_scale=4.0)
    rgba = np.concatenate([picture, alpha[..., None]], axis=-1)
    ours = editor.inpaint_latents([prompt], [rgba], generator=torch.Generator().manual_seed(4), **kwargs)
    assert ours.shape == reference.shape == (1, 16, HEIGHT // 8, WIDTH // 8)
    assert torch.equal(ours, reference)  # bit for bit
    mask_rgba = Image.fromarray(np.concatenate([np.zeros_like(picture), alpha[..., None]], axis=-1), "RGBA")
    for image, mask in ((picture, mask_rgba), (Image.fromarray(picture), repaint)):
        again = editor.inpaint_latents([prompt], [image], [mask], generator=torch.Generator().manual_seed(4), **kwargs)
        assert torch.equal(again, reference)

    # Outside the mask the result is the image's own (sampled) latents, exactly; inside it is generated.
    kept = latent_mask([repaint], HEIGHT, WIDTH)[0, 0] == 0
    assert 0 < int(kept.sum()) < kept.numel()
    image_latents = editor.encode_start_images(
        [picture], height=HEIGHT, width=WIDTH, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(ours[0][:, kept], image_latents[0][:, kept])
    assert (ours[0][:, ~kept] - image_latents[0][:, ~kept]).abs().max().item() > 1e-3

    # The mask must matter, or the comparison above says nothing about it.
    smaller = np.concatenate([picture, _alpha(96, 96, box=(16, 24, 40, 40))[..., None]], axis=-1)
    other = editor.inpaint_latents([prompt], [smaller], generator=torch.Generator().manual_seed(4), **kwargs)
    assert (other - ours).abs().max().item() > 1e-3


def test_mask_conventions():
    picture = structured_picture(32, 32, seed=0)
    alpha = _alpha(32, 32, box=(0, 0, 16, 32))
    image, repaint = inpaint_mask(np.concatenate([picture, alpha[..., None]], axis=-1))
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), picture)
    assert np.array_equal(np.asarray(repaint), 255 - alpha)  # transparent -> white -> regenerate
    _, from_bool = inpaint_mask(picture, alpha == 0)
    assert np.array_equal(np.asarray(from_bool), 255 - alpha)
    _, from_grey = inpaint_mask(Image.fromarray(picture), Image.fromarray(255 - alpha))
    assert np.array_equal(np.asarray(from_grey), 255 - alpha)
    grid = latent_mask([repaint], 32, 32)
    assert grid.shape == (1, 1, 4, 4)
    assert torch.equal(grid[0, 0], torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4))


def test_inpaint_rejects_bad_inputs(tiny_components):
    editor = TextToImage(tiny_components)
    picture = structured_picture(64, 64, seed=0)
    kwargs = dict(height=HEIGHT, width=WIDTH, num_steps=2)
    with pytest.raises(ValueError, match="needs a mask"):
        editor.inpaint_latents(["a"], [picture], **kwargs)
    with pytest.raises(ValueError, match="the mask is 32x64, the image 64x64"):
        editor.inpaint_latents(["a"], [picture], [np.zeros((64, 32), dtype=np.uint8)], **kwargs)
    with pytest.raises(ValueError, match="RGB or RGBA"):
        editor.inpaint_latents(["a"], [picture[..., :2]], **kwargs)
    with pytest.raises(ValueError, match="masks must be"):
        editor.inpaint_latents(["a"], [picture], [np.zeros((64, 64), dtype=np.float32)], **kwargs)
    with pytest.raises(ValueError, match="1 masks for 2 images"):
        editor.inpaint_latents(["a", "b"], [picture, picture], [None], **kwargs)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        editor.inpaint_latents(["a"], [picture], [picture], strength=0, **kwargs)


def test_edit_inpaint_matches_diffusers(tiny_components, monkeypatch):
    """Inpainting guided by an edit instruction: same latents as ``QwenImageEditInpaintPipeline`` (float32, true
    CFG on), bit for bit. The pipeline resizes the image to 1024x1024 pixels of area (the output's size too); the
    test has it use 64x64 instead and checks that it asked for 1024^2."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_inpaint as edit_inpaint

    from models.generation import DIFFUSERS_EDIT_AREA

    asked: list[int] = []
    original = edit_inpaint.calculate_dimensions

    def shrunk(target_area, ratio):
        asked.append(target_area)
        return original(HEIGHT * WIDTH, ratio)

    monkeypatch.setattr(edit_inpaint, "calculate_dimensions", shrunk)
    picture = structured_picture(96, 96, seed=0)
    alpha = _alpha(96, 96, box=(16, 24, 72, 64))
    steps, strength, prompt = 4, 0.75, "turn the block into a window"
    reference = tiny_components.diffusers_edit_inpaint_pipeline()(
        prompt=prompt,
        negative_prompt=" ",
        image=Image.fromarray(picture),
        mask_image=Image.fromarray(255 - alpha),
        strength=strength,
        num_inference_steps=steps,
        true_cfg_scale=4.0,
        generator=torch.Generator().manual_seed(6),
        output_type="latent",
    ).images
    reference = unpack_latents(reference, HEIGHT // 8, WIDTH // 8)
    assert asked == [DIFFUSERS_EDIT_AREA]

    editor = TextToImage(tiny_components)
    kwargs = dict(num_steps=steps, strength=strength, true_cfg_scale=4.0, source_area=HEIGHT * WIDTH)
    rgba = np.concatenate([picture, alpha[..., None]], axis=-1)
    ours = editor.edit_inpaint_latents([prompt], [rgba], generator=torch.Generator().manual_seed(6), **kwargs)
    assert ours.shape == reference.shape == (1, 16, HEIGHT // 8, WIDTH // 8)
    assert torch.equal(ours, reference)  # bit for bit

    # The image is the edit's condition as well as its start: a different picture under the same mask changes the
    # region regenerated, not only the region kept.
    kept = latent_mask([Image.fromarray(255 - alpha)], HEIGHT, WIDTH)[0, 0] == 0
    other_rgba = np.concatenate([structured_picture(96, 96, seed=1), alpha[..., None]], axis=-1)
    other = editor.edit_inpaint_latents([prompt], [other_rgba], generator=torch.Generator().manual_seed(6), **kwargs)
    assert (other[0][:, ~kept] - ours[0][:, ~kept]).abs().max().item() > 1e-3
