"""Where the three models of a generator live, and where each runs: the serving profiles' device layouts.

The published model is three networks of very different sizes (bf16: the MMDiT 40.9 GB, the Qwen2.5-VL condition
encoder 15.5 GB without its language-model head, the VAE 0.25 GB; ``serving/memory.py`` counts them), used one after
the other for a request: encoder, then the transformer at every step, then the VAE. A placement says how they share
the devices:

- ``resident``: all three on one device (an 80 GB GPU, or the CPU).
- ``model_offload``: all three in host memory; each is moved to the GPU for its part of a call and back after it, so
  the GPU holds the largest one at a time (diffusers' ``enable_model_cpu_offload`` does the same with hooks). Costs
  one host-to-GPU copy of each model per call (about 2 s for the transformer over PCIe 4), not per step.
- ``encoder_on_cpu``: the condition encoder runs on the CPU (a prompt is a few hundred tokens); transformer and VAE
  stay on the GPU.
- ``block_offload``: ``encoder_on_cpu``, and the transformer's blocks live in host memory and are streamed to the GPU
  group by group during each forward pass (diffusers' group offloading, with a CUDA stream prefetching the next
  group), for GPUs that cannot hold the 40.9 GB transformer at all. Every step copies the whole transformer: the
  slowest profile, and the only one for a 24 GB GPU without quantisation.
- ``two_gpus``: the encoder on the first GPU, transformer and VAE on the second.

``Placement.use(module)`` brackets each model's part of a call; only ``model_offload`` moves anything there.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Literal

import torch

PlacementMode = Literal["resident", "model_offload", "encoder_on_cpu", "block_offload", "two_gpus"]
PLACEMENTS: tuple[str, ...] = ("resident", "model_offload", "encoder_on_cpu", "block_offload", "two_gpus")


@dataclasses.dataclass
class Placement:
    """Devices of one generator. ``device``: where the transformer and the VAE compute (and where latents live);
    ``encoder_device``: where the condition encoder computes; ``offloaded``: the modules kept in host memory between
    their uses (``model_offload``)."""

    mode: str = "resident"
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    encoder_device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    offloaded: tuple[torch.nn.Module, ...] = ()

    @contextlib.contextmanager
    def use(self, module: torch.nn.Module) -> Iterator[None]:
        """Run ``module``'s part of a call on its compute device: an offloaded module is moved there for the block
        and back to host memory after it (also when the block raises, so a failed request leaves the GPU free)."""
        if not any(module is held for held in self.offloaded):
            yield
            return
        module.to(self.device)
        try:
            yield
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # hand the freed blocks back before the next model is moved in


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def place(components, mode: str, device: str | torch.device = "auto", *, blocks_per_group: int = 1) -> Placement:
    """Put ``components`` (loaded on the CPU) where ``mode`` says, on ``device``, and return their ``Placement``.

    ``two_gpus`` uses ``cuda:0`` for the encoder and ``cuda:1`` for the rest (a Serve replica with ``num_gpus: 2``
    sees its two GPUs as 0 and 1); on a machine without them it fails here, naming what it found.
    """
    if mode not in PLACEMENTS:
        raise ValueError(f"unknown placement {mode!r}; choose from {list(PLACEMENTS)}")
    compute = resolve_device(str(device))
    transformer, vae, encoder = components.transformer, components.vae, components.text_encoder
    cpu = torch.device("cpu")
    if mode == "resident":
        components.to(device=compute)
        return Placement(mode, compute, compute)
    if mode == "model_offload":
        components.to(device=cpu)
        return Placement(mode, compute, compute, offloaded=(transformer, vae, encoder))
    if mode == "encoder_on_cpu":
        encoder.to(cpu)
        transformer.to(compute)
        vae.to(compute)
        return Placement(mode, compute, cpu)
    if mode == "block_offload":
        encoder.to(cpu)
        vae.to(compute)
        transformer.to(cpu)
        transformer.enable_group_offload(
            onload_device=compute,
            offload_device=cpu,
            offload_type="block_level",
            num_blocks_per_group=blocks_per_group,
            use_stream=compute.type == "cuda",  # prefetch the next group while this one computes
        )
        return Placement(mode, compute, cpu)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        raise ValueError(f"placement two_gpus needs two visible CUDA devices; this process sees {count}")
    first, second = torch.device("cuda:0"), torch.device("cuda:1")
    encoder.to(first)
    transformer.to(second)
    vae.to(second)
    return Placement(mode, second, first)
