"""Image reconstruction metrics with the conventions of docs/qwen_image.md §9, fixed here once for every caller.

- Inputs are RGB ``[B, 3, H, W]`` tensors in [0, 1] (data range 1). Evaluation passes both images as uint8 files
  would store them (the reconstruction rounded to uint8, then both divided by 255), so a score does not depend on
  what a decoder writes between two grey levels.
- PSNR: ``10 log10(1 / MSE)`` with the MSE over every pixel and channel of one image; a data set's PSNR is the mean
  of its images' PSNRs (not the PSNR of the mean MSE). Identical images would give infinity: the MSE is floored at
  ``1e-10`` (100 dB) so that a mean stays finite.
- SSIM: Wang et al. (2004) with an 11x11 Gaussian window of sigma 1.5 (the 1-D kernel normalised over its 11 taps),
  K1 0.01, K2 0.03, population (not sample) variances. It is computed on each RGB channel separately (not on luma)
  and averaged over the three channels, and only over the positions where the whole window lies inside the image
  ("valid": no padding, 5 pixels lost at each border). These are scikit-image's settings for
  ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
  channel_axis=-1)``, which the tests compare against.

Everything is plain torch and differentiable, so ``1 - ssim`` also serves as a training loss (``training.vae_finetune``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 1.0
MIN_MSE = 1e-10


def _check_pair(first: torch.Tensor, second: torch.Tensor) -> None:
    if first.shape != second.shape or first.ndim != 4 or first.shape[1] != 3:
        raise ValueError(f"expected two RGB [B, 3, H, W] tensors of one shape, got {first.shape} and {second.shape}")
    if min(first.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"images must be at least {SSIM_WINDOW} pixels a side for SSIM, got {tuple(first.shape[-2:])}")


def psnr(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, ``[B]``, of RGB ``[B, 3, H, W]`` images in [0, 1]."""
    _check_pair(first, second)
    mse = (first - second).pow(2).flatten(1).mean(dim=1).clamp_min(MIN_MSE)
    return 10 * torch.log10(DATA_RANGE**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype: torch.dtype = torch.float64):
    """The separable SSIM window as a 1-D kernel ``[size]`` that sums to 1."""
    offsets = torch.arange(size, dtype=dtype) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Valid-mode separable Gaussian filter of every channel: ``[B, C, H, W] -> [B, C, H-10, W-10]``."""
    channels = images.shape[1]
    rows = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    cols = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    return F.conv2d(F.conv2d(images, rows, groups=channels), cols, groups=channels)


def ssim(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM, ``[B]``, of RGB ``[B, 3, H, W]`` images in [0, 1] (per channel, then the channel mean)."""
    _check_pair(first, second)
    kernel = gaussian_window(dtype=first.dtype).to(first.device)
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    mean_a, mean_b = _blur(first, kernel), _blur(second, kernel)
    var_a = _blur(first * first, kernel) - mean_a**2
    var_b = _blur(second * second, kernel) - mean_b**2
    covariance = _blur(first * second, kernel) - mean_a * mean_b
    numerator = (2 * mean_a * mean_b + c1) * (2 * covariance + c2)
    denominator = (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    return (numerator / denominator).flatten(2).mean(dim=2).mean(dim=1)


def uint8_to_unit(images) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` RGB (numpy or torch) -> float64 ``[B, 3, H, W]`` in [0, 1] for the metrics above."""
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B, H, W, 3] RGB images, got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor.permute(0, 3, 1, 2).to(torch.float64) / 255.0
