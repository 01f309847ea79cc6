"""Text to image and image editing with our stack: condition encoder -> Euler ODE sampler with true CFG -> VAE.

The one generator behind the demo, the trainer's sample grids, the server and the evaluation jobs.

    generator = TextToImage.from_preset("tiny")
    images = generator(["a red fox"], height=256, width=256, num_steps=20, seeds=[0])  # uint8 [1, 256, 256, 3]
    edited = generator.edit(["make the sky purple"], [photo], height=256, width=256, seeds=[0])

Editing (TI2I, docs/qwen_image.md §6): the source image is resized (Lanczos, keeping its aspect ratio) to
``source_area`` pixels in sides of multiples of 32, VAE-encoded and appended to the generated tokens at frame 1; the
condition encoder sees it through Qwen2.5-VL's vision tower with the edit template (drop 64), at ``vision_area`` pixels
(default: the same resized image). ``QwenImageEditPipeline`` fixes both at 1024 x 1024 pixels of area; a model trained
on the platform's latent store sees the store's settings (``EncodeConfig.edit_vision_area``; the source at the target's
bucket size), which is what ``source_area=None`` (the target's area) reproduces.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import torch
from PIL import Image

from models.condition_encoder import ConditionEncoder, PromptEmbeds
from models.placement import Placement
from models.presets import ALL_PARTS, Components, build_components
from models.sampler import StepCallback, sample
from models.vae import LatentVAE, tensor_to_images

# Inference defaults of the report (docs/qwen_image.md §5).
DEFAULT_STEPS = 50
DEFAULT_TRUE_CFG = 4.0
DEFAULT_NEGATIVE_PROMPT = " "
# QwenImageEditPipeline: the source image (and, unless told otherwise, the size of the output) at this area.
DIFFUSERS_EDIT_AREA = 1024 * 1024


def edit_source_size(area: int, width: int, height: int) -> tuple[int, int]:
    """(width, height) of ``area`` pixels with the aspect ratio of ``width x height``, sides rounded to multiples of
    32 (diffusers' ``calculate_dimensions``)."""
    if area <= 0 or width <= 0 or height <= 0:
        raise ValueError(f"edit_source_size needs positive sizes, got area={area}, {width}x{height}")
    ratio = width / height
    new_width = math.sqrt(area * ratio)
    new_height = new_width / ratio
    return max(32, round(new_width / 32) * 32), max(32, round(new_height / 32) * 32)


def as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a PIL image (any mode) or a uint8 ``[H, W, 3]`` array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"source images must be RGB uint8 [H, W, 3] arrays or PIL images, got {array.dtype} {array.shape}"
        )
    return Image.fromarray(array)


def resize_lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize as diffusers' image processor does (PIL Lanczos; a same-size call returns a copy)."""
    return image.resize((width, height), resample=Image.LANCZOS)


def _seeded(seeds: list[int] | None, count: int, generator):
    """One generator per image from ``seeds`` (each image reproducible on its own), else ``generator``."""
    if seeds is None:
        return generator
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} prompts")
    return [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]


class TextToImage:
    """A loaded model that turns prompts into images.

    ``placement`` (``models.placement.place``) says where each model computes and which are moved to the GPU only for
    their part of a call; without one, everything computes where the transformer is. ``__call__`` and ``edit`` run
    under ``torch.inference_mode`` (their results leave as arrays); ``generate_latents`` and ``edit_latents`` under
    ``no_grad``, since their tensors go on into training code (DPO pairs, GRPO), which inference tensors would refuse.
    """

    def __init__(self, components: Components, placement: Placement | None = None):
        components.require(*ALL_PARTS)
        self.components = components
        device = components.transformer.device
        self.placement = placement or Placement("resident", device, components.text_encoder.device)
        self.encoder = ConditionEncoder(components.text_encoder, components.tokenizer)
        self.edit_encoder = ConditionEncoder(components.text_encoder, components.tokenizer, template="edit")
        self.vae = LatentVAE(components.vae)
        self.scheduler_config = dict(components.scheduler.config)
        self.adapters: dict[str, float] = {}  # LoRA adapters loaded by name, with their scales
        self._active: str | None = None  # the adapter generation uses (None: the base)

    def load_adapter(self, name: str, path: str | pathlib.Path, scale: float = 1.0) -> None:
        """Add the LoRA adapter file at ``path`` (diffusers' format: ours or another tool's) as ``name``; the base
        weights are not touched, and generation uses the adapter only once ``use_adapter(name)`` is called."""
        from models.lora import load_adapter

        if name in self.adapters:
            raise ValueError(f"an adapter named {name!r} is already loaded")
        load_adapter(self.components.transformer, path, name)  # which makes it the active one: set ours again
        self.adapters[name] = float(scale)
        self._activate(self._active)

    def unload_adapter(self, name: str) -> None:
        """Take the adapter ``name`` out of the transformer (its layers return to the bare base layers)."""
        self._check_loaded(name)
        self.components.transformer.delete_adapters(name)
        del self.adapters[name]
        self._activate(None if self._active == name else self._active)

    def use_adapter(self, name: str | None) -> None:
        """Generate with the adapter ``name`` from now on, or with the base alone (None)."""
        if name != self._active:
            self._activate(name)

    def _check_loaded(self, name: str) -> None:
        if name not in self.adapters:
            raise ValueError(f"no adapter named {name!r} is loaded (loaded: {sorted(self.adapters)})")

    def _activate(self, name: str | None) -> None:
        transformer = self.components.transformer
        if name is None:
            if self.adapters:
                transformer.disable_lora()
        else:
            self._check_loaded(name)
            transformer.enable_lora()
            transformer.set_adapters([name], [self.adapters[name]])
        self._active = name

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
        """Where the transformer and the VAE compute, and where latents live."""
        return self.placement.device

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        with self.placement.use(self.components.text_encoder):
            embeds = self.encoder.encode(prompts)
        return embeds.to(self.device, self.components.transformer.dtype)

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
        generator = _seeded(seeds, len(prompts), generator)
        prompt = self.encode(prompts)
        negative = None
        if negative_prompt is not None and true_cfg_scale > 1:
            negative = self.encode([negative_prompt])
        return self._sample(prompt, negative, height, width, num_steps, true_cfg_scale, generator, on_step)

    def _sample(self, prompt, negative, height, width, num_steps, true_cfg_scale, generator, on_step, source=None):
        with self.placement.use(self.components.transformer):
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
                source_latents=source,
            )

    def prepare_sources(
        self,
        images: list,
        *,
        height: int,
        width: int,
        source_area: int | None = None,
        vision_area: int | None = None,
    ) -> tuple[torch.Tensor, list[Image.Image]]:
        """Source images -> (normalised source latents ``[B, 16, h', w']``, the images the vision tower sees).

        All sources of one call must come out at one size (one batch); give sources of one aspect ratio."""
        area = source_area if source_area is not None else height * width
        pils = [as_pil(image) for image in images]
        resized, vision = [], []
        for image in pils:
            source_w, source_h = edit_source_size(area, *image.size)
            resized.append(resize_lanczos(image, source_w, source_h))
            if vision_area is None:
                vision.append(resized[-1])
            else:
                vision.append(resize_lanczos(image, *edit_source_size(vision_area, *image.size)))
        sizes = {image.size for image in resized}
        if len(sizes) != 1:
            raise ValueError(f"source images of one batch must share an aspect ratio; they resize to {sorted(sizes)}")
        pixels = torch.stack(
            [torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1) for image in resized]
        )
        with self.placement.use(self.components.vae):
            latents = self.vae.encode(pixels * 2.0 - 1.0)
        return latents.to(self.device, self.components.transformer.dtype), vision

    @torch.no_grad()
    def edit_latents(
        self,
        prompts: list[str],
        images: list,
        *,
        height: int,
        width: int,
        num_steps: int = DEFAULT_STEPS,
        true_cfg_scale: float = DEFAULT_TRUE_CFG,
        negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
        seeds: list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        source_area: int | None = None,
        vision_area: int | None = None,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """Edited latents ``[len(prompts), 16, H/8, W/8]``: one source image and one instruction per output. The
        negative prompt is encoded with the same source image, as diffusers does."""
        if not prompts:
            raise ValueError("no instructions")
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} source images for {len(prompts)} instructions")
        generator = _seeded(seeds, len(prompts), generator)
        source_latents, vision = self.prepare_sources(
            images, height=height, width=width, source_area=source_area, vision_area=vision_area
        )
        dtype = self.components.transformer.dtype
        negative = None
        with self.placement.use(self.components.text_encoder):
            prompt = self.edit_encoder.encode_edit(prompts, vision).to(self.device, dtype)
            if negative_prompt is not None and true_cfg_scale > 1:
                negative = self.edit_encoder.encode_edit([negative_prompt] * len(prompts), vision)
                negative = negative.to(self.device, dtype)
        return self._sample(
            prompt, negative, height, width, num_steps, true_cfg_scale, generator, on_step, source_latents
        )

    @torch.inference_mode()
    def edit(self, prompts: list[str], images: list, **kwargs) -> np.ndarray:
        """Edited images, uint8 RGB ``[B, H, W, 3]`` (see ``edit_latents``)."""
        return self.decode(self.edit_latents(prompts, images, **kwargs))

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents -> uint8 RGB ``[B, H, W, 3]`` (sliced and tiled as ``self.vae`` is configured)."""
        with self.placement.use(self.components.vae):
            return tensor_to_images(self.vae.decode(latents))

    @torch.inference_mode()
    def __call__(self, prompts: list[str], **kwargs) -> np.ndarray:
        return self.decode(self.generate_latents(prompts, **kwargs))
