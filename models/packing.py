"""Packing latents into 2x2 patch tokens for the MMDiT, and back (docs/qwen_image.md §6).

``latents: [B, 16, H/8, W/8]`` <-> ``tokens: [B, (H/16)(W/16), 64]``; channel-major inside a patch, exactly as
``QwenImagePipeline._pack_latents``. ``img_shapes`` tells the rotary embedding the (frame, rows, cols) token grid.

Editing (TI2I): the source image's packed latents follow the generated image's tokens in one sequence; the rotary
embedding gives each image of ``img_shapes`` its index as frame offset, so the source sits at frame 1
(docs/qwen_image.md §6), and the model's output is sliced back to the generated tokens. Multi-image editing
(Qwen-Image-Edit-2509's ``QwenImageEditPlusPipeline``, docs/editing.md) appends several references, each at its own
frame: 1, 2, ... in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LATENT_CHANNELS = 16
VAE_SCALE_FACTOR = 8
PATCH_SIZE = 2
# Image sides must be multiples of this: 8x VAE compression times 2x2 patches.
PIXEL_MULTIPLE = VAE_SCALE_FACTOR * PATCH_SIZE


def check_image_size(height: int, width: int) -> None:
    """Raise a ValueError unless both sides are positive multiples of 16."""
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % PIXEL_MULTIPLE:
            raise ValueError(f"{name}={value} must be a positive multiple of {PIXEL_MULTIPLE} (VAE 8x, 2x2 patches)")


def latent_size(height: int, width: int) -> tuple[int, int]:
    """Latent rows and columns of an image of ``height`` x ``width`` pixels."""
    check_image_size(height, width)
    return height // VAE_SCALE_FACTOR, width // VAE_SCALE_FACTOR


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]``."""
    batch, channels, rows, cols = latents.shape
    if rows % PATCH_SIZE or cols % PATCH_SIZE:
        raise ValueError(f"latent grid {rows}x{cols} must be even to pack 2x2 patches")
    tokens = latents.view(batch, channels, rows // 2, 2, cols // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return tokens.reshape(batch, (rows // 2) * (cols // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``[B, (h/2)(w/2), 4C]`` -> ``[B, C, h, w]`` for a latent grid of ``rows`` x ``cols``."""
    batch, num_tokens, packed_channels = tokens.shape
    if num_tokens != (rows // 2) * (cols // 2):
        raise ValueError(f"{num_tokens} tokens do not tile a {rows}x{cols} latent grid in 2x2 patches")
    channels = packed_channels // 4
    latents = tokens.view(batch, rows // 2, cols // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch, channels, rows, cols)


def img_shapes(
    batch_size: int,
    rows: int,
    cols: int,
    source: tuple[int, int] | None = None,
    *,
    sources: Sequence[tuple[int, int]] = (),
) -> list[list[tuple[int, int, int]]]:
    """Rotary grid per sample: one generated image (frame 0) of ``rows/2`` x ``cols/2`` tokens, then, for an edit,
    the source image of latent size ``source = (rows, cols)`` (frame 1), or several references of latent sizes
    ``sources`` (frames 1, 2, ...)."""
    if source is not None and sources:
        raise ValueError("give one source grid (source=) or several (sources=), not both")
    grids = [source] if source is not None else list(sources)
    shapes = [(1, rows // 2, cols // 2)] + [(1, grid[0] // 2, grid[1] // 2) for grid in grids]
    return [shapes] * batch_size


def pack_sources(
    source_latents: torch.Tensor | Sequence[torch.Tensor] | None, batch_size: int, device, dtype
) -> tuple[torch.Tensor | None, list[tuple[int, int]]]:
    """Edit references (``[B, 16, h, w]``, or a sequence of such for several) -> their packed tokens one after another
    ``[B, M, 64]`` on ``device`` in ``dtype`` and their latent grids, for ``img_shapes(..., sources=)``; None: no
    reference."""
    if source_latents is None:
        return None, []
    references = [source_latents] if isinstance(source_latents, torch.Tensor) else list(source_latents)
    if not references:
        raise ValueError("source_latents is an empty sequence: pass None for no reference")
    for reference in references:
        if reference.ndim != 4 or reference.shape[:2] != (batch_size, LATENT_CHANNELS):
            raise ValueError(f"source_latents must be [{batch_size}, 16, h, w], got {tuple(reference.shape)}")
    tokens = torch.cat([pack_latents(reference.to(device, dtype)) for reference in references], dim=1)
    return tokens, [tuple(reference.shape[2:]) for reference in references]
