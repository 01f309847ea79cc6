"""The VAE with latent normalisation: images in, normalised latents out, and back (docs/qwen_image.md §6).

``z_n = (z - latents_mean) / latents_std`` per channel, with the 16 values of the VAE's config. The Wan-2.1 VAE is a
video model; images are one frame, so a frame axis is added on the way in and removed on the way out.

One frame makes most of the video model's work multiplication by zero: every causal 3D convolution pads the time axis
with two zero frames in front, so of its three temporal taps only the last meets the image. ``LatentVAE(...,
frame_convs="2d")`` runs each such convolution as the 2D convolution it reduces to (that tap's kernel): a third of the
multiply-adds and no padded copy, the same function up to float rounding (6e-7 on the latents), not bit for bit.
``benchmarks/vae_frames.py`` measured the published architecture at 256 px on 2 CPU cores: encode 2.4x and decode
2.5x faster. The default ("3d") is diffusers' own computation, bit for bit; the producers use "2d"
(``pipelines.encode.EncodeConfig.vae_frame_convs``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLQwenImage
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

FrameConvs = Literal["3d", "2d"]

# Set only inside a LatentVAE call that asked for "2d", in its own thread or task: other users of the class (diffusers'
# pipelines, training the VAE) keep diffusers' computation.
_ONE_FRAME_AS_2D: contextvars.ContextVar[bool] = contextvars.ContextVar("one_frame_as_2d", default=False)


def _reduces_to_2d(conv: QwenImageCausalConv3d, x: torch.Tensor, cache_x: torch.Tensor | None) -> bool:
    """One frame, nothing cached from an earlier chunk, causal padding of kernel - 1 zero frames, no time stride: the
    output frame sees the last temporal tap only."""
    return (
        x.shape[2] == 1
        and cache_x is None
        and conv.stride[0] == 1
        and conv.dilation[0] == 1
        and conv._padding[4] == conv.kernel_size[0] - 1
        and conv._padding[5] == 0
    )


def _one_frame_conv(conv: QwenImageCausalConv3d, x: torch.Tensor) -> torch.Tensor:
    frame = x[:, :, 0]
    spatial = conv._padding[:4]  # (left, right, top, bottom), zeros as diffusers pads
    if any(spatial):
        frame = F.pad(frame, spatial)
    weight = conv.weight[:, :, -1]
    out = F.conv2d(frame, weight, conv.bias, conv.stride[1:], 0, conv.dilation[1:], conv.groups)
    return out.unsqueeze(2)


def _install_one_frame_path() -> None:
    """Wraps ``QwenImageCausalConv3d.forward`` once: inside ``_frame_convs("2d")`` a convolution that reduces to 2D runs
    as 2D; everywhere else the wrapper calls diffusers' forward unchanged."""
    exact = QwenImageCausalConv3d.forward
    if getattr(exact, "one_frame_path", False):
        return

    def forward(self, x, cache_x=None):
        if _ONE_FRAME_AS_2D.get() and _reduces_to_2d(self, x, cache_x):
            return _one_frame_conv(self, x)
        return exact(self, x, cache_x)

    forward.one_frame_path = True
    QwenImageCausalConv3d.forward = forward


_install_one_frame_path()


@contextlib.contextmanager
def _frame_convs(mode: FrameConvs) -> Iterator[None]:
    token = _ONE_FRAME_AS_2D.set(mode == "2d")
    try:
        yield
    finally:
        _ONE_FRAME_AS_2D.reset(token)


class LatentVAE:
    """Normalised encode / decode around ``AutoencoderKLQwenImage``.

    images: ``[B, 3, H, W]`` in [-1, 1]; latents: ``[B, 16, H/8, W/8]`` normalised. ``frame_convs``: "3d" computes as
    diffusers does (bit for bit), "2d" runs the causal convolutions as the 2D ones they reduce to for one frame.
    """

    def __init__(self, vae: AutoencoderKLQwenImage, *, frame_convs: FrameConvs = "3d"):
        if frame_convs not in ("3d", "2d"):
            raise ValueError(f"frame_convs must be '3d' or '2d', got {frame_convs!r}")
        self.vae = vae
        self.frame_convs = frame_convs
        self.max_batch_pixels: int | None = None  # decode in slices of at most this many output pixels
        channels = vae.config.z_dim
        self.latents_mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, channels, 1, 1)
        self.latents_std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, channels, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    def normalize(self, latents: torch.Tensor, *, inverse_std: bool = False) -> torch.Tensor:
        """``(z - mean) / std``; with ``inverse_std``, ``(z - mean) * (1 / std)`` as diffusers' image-to-image and
        inpainting pipelines write it (the same value up to the last bit of float rounding)."""
        mean = self.latents_mean.to(latents.device, latents.dtype)
        if inverse_std:
            return (latents - mean) * (1.0 / self.latents_std).to(latents.device, latents.dtype)
        std = self.latents_std.to(latents.device, latents.dtype)
        return (latents - mean) / std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean = self.latents_mean.to(latents.device, latents.dtype)
        std = self.latents_std.to(latents.device, latents.dtype)
        return latents * std + mean

    @torch.no_grad()
    def encode(
        self,
        images: torch.Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        inverse_std: bool = False,
    ) -> torch.Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> normalised ``[B, 16, H/8, W/8]`` (posterior mode unless ``sample``, drawn
        with ``generator``; ``inverse_std``: see ``normalize``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        with _frame_convs(self.frame_convs):
            posterior = self.vae.encode(images.to(self.device, self.dtype).unsqueeze(2)).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mode()
        return self.normalize(latents[:, :, 0], inverse_std=inverse_std)

    def configure_decoding(
        self, *, max_batch_pixels: int | None = None, tile_size: int | None = None, tile_overlap: int = 64
    ) -> None:
        """Bound the VAE's working memory, which grows with the pixels of one call (measured on the published VAE:
        about 2.8 GiB per 1328² image in bf16, see ``serving/memory.py``).

        ``max_batch_pixels``: a batch is decoded in slices of at most this many output pixels (at least one image
        each; an image comes out as decoding it alone gives it, bit for bit, and within float rounding of one call for
        the whole batch). ``tile_size``: an image with a side above it is
        encoded and decoded in overlapping square tiles of this many pixels, ``tile_overlap`` of them blended with
        the next tile (diffusers' tiled decoding of this VAE); the result differs from one call near tile seams
        (``tests/models/test_vae.py`` states by how much)."""
        if max_batch_pixels is not None and max_batch_pixels <= 0:
            raise ValueError(f"max_batch_pixels must be positive, got {max_batch_pixels}")
        self.max_batch_pixels = max_batch_pixels
        if tile_size is None:
            self.vae.disable_tiling()
            return
        if tile_size % 32 or not 0 <= tile_overlap < tile_size or tile_overlap % 8:
            raise ValueError(
                f"tile_size must be a multiple of 32 and tile_overlap a multiple of 8 below it; got {tile_size}, "
                f"{tile_overlap}"
            )
        stride = tile_size - tile_overlap
        self.vae.enable_tiling(
            tile_sample_min_height=tile_size,
            tile_sample_min_width=tile_size,
            tile_sample_stride_height=stride,
            tile_sample_stride_width=stride,
        )

    def _slices(self, batch: int, pixels_per_image: int) -> list[slice]:
        if self.max_batch_pixels is None:
            return [slice(0, batch)]
        step = max(1, self.max_batch_pixels // pixels_per_image)
        return [slice(start, start + step) for start in range(0, batch, step)]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B, 16, h, w]`` -> images ``[B, 3, 8h, 8w]`` in [-1, 1]."""
        raw = self.denormalize(latents.to(self.device, self.dtype))
        pixels = raw.shape[-2] * raw.shape[-1] * 64
        parts = []
        with _frame_convs(self.frame_convs):
            for part in self._slices(raw.shape[0], pixels):
                parts.append(self.vae.decode(raw[part].unsqueeze(2), return_dict=False)[0][:, :, 0])
        images = parts[0] if len(parts) == 1 else torch.cat(parts)
        return images.clamp(-1, 1)


def encode_posterior(vae: AutoencoderKLQwenImage, images: torch.Tensor, *, frame_convs: FrameConvs = "3d"):
    """``[B, 3, H, W]`` in [-1, 1] -> the raw posterior (diffusers' ``DiagonalGaussianDistribution``, one frame),
    with gradients: for training the VAE itself."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    with _frame_convs(frame_convs):
        moments = vae.encode(images.unsqueeze(2)).latent_dist.parameters
    return DiagonalGaussianDistribution(moments[:, :, 0])


def decode_unclamped(vae: AutoencoderKLQwenImage, latents: torch.Tensor, *, frame_convs: FrameConvs = "3d"):
    """Raw latents ``[B, 16, h, w]`` -> images ``[B, 3, 8h, 8w]`` as the decoder computes them, not clamped to
    [-1, 1]: diffusers' ``decode`` clamps, which zeroes the gradient of every pixel past the bound, so training a
    decoder through it stalls on saturated colours. Equal to ``decode`` wherever that does not clamp."""
    vae.clear_cache()
    try:
        with _frame_convs(frame_convs):
            hidden = vae.post_quant_conv(latents.unsqueeze(2))
            out = vae.decoder(hidden, feat_cache=vae._feat_map, feat_idx=[0])
    finally:
        vae.clear_cache()
    return out[:, :, 0]


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` RGB -> float ``[B, 3, H, W]`` in [-1, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B, H, W, 3] RGB images, got {images.dtype} {images.shape}")
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(images: torch.Tensor) -> np.ndarray:
    """float ``[B, 3, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, 3]`` RGB (rounded as diffusers' image processor does)."""
    array = ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return (array * 255).round().astype(np.uint8)
