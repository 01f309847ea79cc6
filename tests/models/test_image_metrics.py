"""PSNR / SSIM (docs/qwen_image.md §9) against scikit-image, an independent implementation, on fixed images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from models.image_metrics import psnr, ssim, uint8_to_unit


def _fixed_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Three uint8 pairs at 48x64: noise vs its noisy copy, a gradient vs a shifted one, text-like stripes vs blur."""
    rng = np.random.default_rng(1234)
    noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    noisy = np.clip(noise.astype(int) + rng.integers(-20, 21, noise.shape), 0, 255).astype(np.uint8)
    ramp = np.linspace(0, 255, 64)[None, :, None].repeat(48, 0).repeat(3, 2).astype(np.uint8)
    shifted = np.roll(ramp, 3, axis=1)
    stripes = np.zeros((48, 64, 3), dtype=np.uint8)
    stripes[::4] = 255
    stripes[:, :, 1] //= 2
    blurred = ((stripes.astype(int) + np.roll(stripes, 1, axis=0)) // 2).astype(np.uint8)
    return np.stack([noise, ramp, stripes]), np.stack([noisy, shifted, blurred])


def test_psnr_ssim_match_reference() -> None:
    originals, reconstructions = _fixed_pairs()
    ours_psnr = psnr(uint8_to_unit(originals), uint8_to_unit(reconstructions)).numpy()
    ours_ssim = ssim(uint8_to_unit(originals), uint8_to_unit(reconstructions)).numpy()
    for index, (original, reconstruction) in enumerate(zip(originals, reconstructions, strict=True)):
        first, second = original / 255.0, reconstruction / 255.0
        reference_psnr = peak_signal_noise_ratio(first, second, data_range=1.0)
        reference_ssim = structural_similarity(
            first,
            second,
            data_range=1.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            K1=0.01,
            K2=0.03,
        )
        assert ours_psnr[index] == pytest.approx(reference_psnr, abs=1e-4)
        assert ours_ssim[index] == pytest.approx(reference_ssim, abs=1e-4)
    # The pairs differ enough that a wrong window or constant would show.
    assert ours_ssim.max() < 0.99 and ours_ssim.min() > 0


def test_ssim_is_one_for_identical_images_and_differentiable() -> None:
    originals, _ = _fixed_pairs()
    images = uint8_to_unit(originals)
    assert torch.allclose(ssim(images, images), torch.ones(3, dtype=torch.float64))
    assert torch.equal(psnr(images, images), torch.full((3,), 100.0, dtype=torch.float64))
    guess = torch.zeros_like(images, requires_grad=True)
    (1 - ssim(guess, images)).sum().backward()
    assert guess.grad is not None and guess.grad.abs().sum() > 0
