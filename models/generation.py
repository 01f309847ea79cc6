"""Text to image with our stack: condition encoder -> Euler ODE sampler with true CFG -> VAE decode.

The one generator behind the demo, the trainer's sample grids, the server and the evaluation jobs.

    generator = TextToImage.from_preset("tiny")
    images = generator(["a red fox"], height=256, width=256, num_steps=20, seeds=[0])  # uint8 [1, 256, 256, 3]
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from models.condition_encoder import ConditionEncoder, PromptEmbeds
from models.presets import ALL_PARTS, Components, build_components
from models.sampler import StepCallback, sample
from models.vae import LatentVAE, tensor_to_images

# Inference defaults of the report (SPEC section 5).
DEFAULT_STEPS = 50
DEFAULT_TRUE_CFG = 4.0
DEFAULT_NEGATIVE_PROMPT = " "
# Aspect ratio -> (width, height) at the published 1328 resolution (SPEC section 5).
INFERENCE_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1328, 1328),
    "16:9": (1664, 928),
    "9:16": (928, 1664),
    "4:3": (1472, 1104),
    "3:4": (1104, 1472),
    "3:2": (1584, 1056),
    "2:3": (1056, 1584),
}


class TextToImage:
    """A loaded model that turns prompts into images."""

    def __init__(self, components: Components):
        components.require(*ALL_PARTS)
        self.components = components
        self.encoder = ConditionEncoder(components.text_encoder, components.tokenizer)
        self.vae = LatentVAE(components.vae)
        self.scheduler_config = dict(components.scheduler.config)

    @classmethod
    def from_preset(
        cls,
        preset: str = "tiny",
        *,
        weights_dir: str | pathlib.Path | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> TextToImage:
        return cls(build_components(preset, weights_dir=weights_dir, device=device, dtype=dtype, seed=seed))

    @classmethod
    def from_checkpoint(
        cls,
        folder: str | pathlib.Path,
        *,
        weights_dir: str | pathlib.Path | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> TextToImage:
        """A checkpoint folder we wrote: the parts it holds come from it (a trainer saves only the transformer),
        the others from its preset (``weights_dir`` for ``qwen-image``), as the producers encoded with them."""
        from models.checkpoint import read_metadata

        metadata = read_metadata(folder)
        preset = metadata.get("preset", "qwen-image")
        saved = tuple(metadata.get("parts", ALL_PARTS))
        components = build_components(preset, weights_dir=folder, parts=saved, device=device, dtype=dtype)
        rest = tuple(part for part in ALL_PARTS if part not in saved)
        if rest:
            base = build_components(preset, weights_dir=weights_dir, parts=rest, device=device, dtype=dtype)
            for part in rest:
                setattr(components, part, getattr(base, part))
        return cls(components)

    @property
    def device(self) -> torch.device:
        return self.components.transformer.device

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        return self.encoder.encode(prompts).to(self.device, self.components.transformer.dtype)

    @torch.no_grad()
    def generate_latents(
        self,
        prompts: list[str],
        *,
        height: int,
        width: int,
        num_steps: int = DEFAULT_STEPS,
        true_cfg_scale: float = DEFAULT_TRUE_CFG,
        negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
        seeds: list[int] | None = None,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """Normalised latents ``[len(prompts), 16, H/8, W/8]``; one seed per prompt makes each image reproducible
        on its own, whatever else is in the batch."""
        if not prompts:
            raise ValueError("no prompts")
        if seeds is not None:
            if len(seeds) != len(prompts):
                raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
            generator = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        prompt = self.encode(prompts)
        negative = None
        if negative_prompt is not None and true_cfg_scale > 1:
            negative = self.encode([negative_prompt])
        return sample(
            self.components.transformer,
            prompt,
            height=height,
            width=width,
            num_steps=num_steps,
            negative=negative,
            true_cfg_scale=true_cfg_scale,
            generator=generator,
            scheduler_config=self.scheduler_config,
            on_step=on_step,
        )

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents -> uint8 RGB ``[B, H, W, 3]``."""
        return tensor_to_images(self.vae.decode(latents))

    def __call__(self, prompts: list[str], **kwargs) -> np.ndarray:
        return self.decode(self.generate_latents(prompts, **kwargs))
