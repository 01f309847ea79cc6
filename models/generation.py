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

Multi-image editing (``template="edit_plus"``, Qwen-Image-Edit-2509 / 2511, ``QwenImageEditPlusPipeline``), image to
image with a ``strength`` (``QwenImageImg2ImgPipeline``) and inpainting (``QwenImageInpaintPipeline``; the mask from a
separate image or from the image's alpha channel) are described in docs/editing.md.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import torch
from PIL import Image

from models.condition_encoder import ConditionEncoder, PromptEmbeds
from models.packing import latent_size
from models.placement import Placement
from models.presets import ALL_PARTS, Components, build_components
from models.sampler import StepCallback, sample, strength_start
from models.vae import LatentVAE, tensor_to_images

# Inference defaults of the report (docs/qwen_image.md §5).
DEFAULT_STEPS = 50
DEFAULT_TRUE_CFG = 4.0
DEFAULT_NEGATIVE_PROMPT = " "
# QwenImageEditPipeline: the source image (and, unless told otherwise, the size of the output) at this area.
DIFFUSERS_EDIT_AREA = 1024 * 1024
# QwenImageEditPlusPipeline: each reference is VAE-encoded at DIFFUSERS_EDIT_AREA and seen by the vision tower at this.
EDIT_PLUS_VISION_AREA = 384 * 384
# QwenImageImg2ImgPipeline's and QwenImageInpaintPipeline's default strength.
DEFAULT_STRENGTH = 0.6
# A mask pixel (after resizing to the output) at or above this, in [0, 1], is regenerated (diffusers' binarize).
MASK_THRESHOLD = 0.5


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


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _alpha(image: Image.Image) -> Image.Image:
    return image.convert("RGBA").getchannel("A")


def inpaint_mask(image: Image.Image | np.ndarray, mask=None) -> tuple[Image.Image, Image.Image]:
    """An inpainting input -> (the RGB image, the repaint mask as a greyscale image, white = regenerate).

    ``mask=None``: the image must have an alpha channel (a PIL image with one, or a uint8 ``[H, W, 4]`` array); its
    transparent pixels mark the region to regenerate, as OpenAI's image edits API defines it. A separate ``mask``
    with an alpha channel is read the same way (transparent = regenerate). A mask without one follows diffusers:
    white regenerates, black keeps (a greyscale or RGB PIL image, a uint8 ``[H, W]`` or ``[H, W, 3]`` array, or a
    bool ``[H, W]`` array, True = regenerate). Either way the repaint mask is ``255 - alpha`` or the mask itself, and
    a pixel is regenerated where, resized to the output, it is at least ``MASK_THRESHOLD`` of white.
    """
    if isinstance(image, Image.Image):
        has_alpha = _has_alpha(image)
        pil = image
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ValueError(
                f"inpainting images must be RGB or RGBA uint8 [H, W, 3|4] arrays or PIL images, got {array.dtype} "
                f"{array.shape}"
            )
        has_alpha = array.shape[-1] == 4
        pil = Image.fromarray(array)
    if mask is None:
        if not has_alpha:
            raise ValueError(
                "inpainting needs a mask: pass one, or an image with an alpha channel whose transparent pixels mark "
                "the region to regenerate"
            )
        repaint = Image.fromarray(255 - np.asarray(_alpha(pil)))
    elif isinstance(mask, Image.Image):
        repaint = Image.fromarray(255 - np.asarray(_alpha(mask))) if _has_alpha(mask) else mask
    else:
        repaint = _mask_from_array(np.asarray(mask))
    if repaint.size != pil.size:
        raise ValueError(f"the mask is {repaint.size[0]}x{repaint.size[1]}, the image {pil.size[0]}x{pil.size[1]}")
    return pil.convert("RGB"), repaint


def _mask_from_array(array: np.ndarray) -> Image.Image:
    if array.dtype == bool and array.ndim == 2:
        return Image.fromarray(array.astype(np.uint8) * 255)
    if array.dtype == np.uint8 and array.ndim == 2:
        return Image.fromarray(array)
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 3:
        return Image.fromarray(array)
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 4:
        return Image.fromarray(255 - array[..., 3])
    raise ValueError(
        f"masks must be PIL images, uint8 [H, W], [H, W, 3] or [H, W, 4] arrays, or bool [H, W] arrays; got "
        f"{array.dtype} {array.shape}"
    )


def resize_lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize as diffusers' image processor does (PIL Lanczos; a same-size call returns a copy)."""
    return image.resize((width, height), resample=Image.LANCZOS)


def _one_image_each(prompts: list[str], images: list, images_are: str, prompts_are: str) -> None:
    """At least one prompt, and one image (or one list of references) per prompt."""
    if not prompts:
        raise ValueError(f"no {prompts_are}")
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} {images_are} for {len(prompts)} {prompts_are}")


def _seeded(seeds: list[int] | None, count: int, generator):
    """One generator per image from ``seeds`` (each image reproducible on its own), else ``generator``."""
    if seeds is None:
        return generator
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} prompts")
    return [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]


def latent_mask(masks: list[Image.Image], height: int, width: int) -> torch.Tensor:
    """Repaint masks (greyscale, white = regenerate; ``inpaint_mask``) -> ``[B, 1, H/8, W/8]`` of 0 and 1, as
    ``QwenImageInpaintPipeline`` computes it: each mask resized (Lanczos) to ``width x height`` then made greyscale,
    1 where at least ``MASK_THRESHOLD``, then sampled to the latent grid (nearest)."""
    rows, cols = latent_size(height, width)
    pixels = np.stack(
        [np.asarray(resize_lanczos(mask, width, height).convert("L"), dtype=np.float32) / 255.0 for mask in masks]
    )
    binary = torch.from_numpy(pixels >= MASK_THRESHOLD).to(torch.float32)[:, None]
    return torch.nn.functional.interpolate(binary, size=(rows, cols))


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
        self.edit_plus_encoder = ConditionEncoder(components.text_encoder, components.tokenizer, template="edit_plus")
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
        prompt, negative = self._encode_prompts(prompts, negative_prompt, true_cfg_scale)
        return self._sample(prompt, negative, height, width, num_steps, true_cfg_scale, generator, on_step)

    def _sample(
        self, prompt, negative, height, width, num_steps, true_cfg_scale, generator, on_step, source=None, **start
    ):
        """``start``: ``image_latents``, ``strength`` and ``mask`` for image to image and inpainting."""
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
                **start,
            )

    def _encode_prompts(self, prompts, negative_prompt, true_cfg_scale) -> tuple[PromptEmbeds, PromptEmbeds | None]:
        prompt = self.encode(prompts)
        negative = None
        if negative_prompt is not None and true_cfg_scale > 1:
            negative = self.encode([negative_prompt])
        return prompt, negative

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
        return self._encode_sources(images, source_area if source_area is not None else height * width, vision_area)

    def _encode_sources(self, images: list, area: int, vision_area: int | None) -> tuple[torch.Tensor, list]:
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
        template: str = "edit",
    ) -> torch.Tensor:
        """Edited latents ``[len(prompts), 16, H/8, W/8]``, one instruction per output. The negative prompt is
        encoded with the same images, as diffusers does.

        ``template="edit"`` (Qwen-Image-Edit, ``QwenImageEditPipeline``): one source image per instruction, at
        ``source_area`` (None: the output's area) for the VAE and ``vision_area`` (None: the same image) for the
        vision tower. ``template="edit_plus"`` (Qwen-Image-Edit-2509 / 2511, ``QwenImageEditPlusPipeline``): one list
        of reference images per instruction; each reference is VAE-encoded on its own at ``source_area`` (None:
        ``DIFFUSERS_EDIT_AREA``) and placed at its own rotary frame (1, 2, ...), and the vision tower sees every
        reference at ``vision_area`` (None: ``EDIT_PLUS_VISION_AREA``) after its "Picture N: " marker. The prompts
        of one call must have as many references each, of matching sizes (one batch); else call once per prompt.
        """
        if template not in ("edit", "edit_plus"):
            raise ValueError(f"template must be 'edit' or 'edit_plus', got {template!r}")
        _one_image_each(prompts, images, "source images", "instructions")
        generator = _seeded(seeds, len(prompts), generator)
        if template == "edit":
            source_latents, vision = self.prepare_sources(
                images, height=height, width=width, source_area=source_area, vision_area=vision_area
            )
            encoder = self.edit_encoder
        else:
            latent_size(height, width)  # a bad output size fails before the references are encoded
            source_latents, vision = self.prepare_references(images, source_area=source_area, vision_area=vision_area)
            encoder = self.edit_plus_encoder
        prompt, negative = self._encode_edit(encoder, prompts, vision, negative_prompt, true_cfg_scale)
        return self._sample(
            prompt, negative, height, width, num_steps, true_cfg_scale, generator, on_step, source_latents
        )

    def _encode_edit(self, encoder, prompts, vision, negative_prompt, true_cfg_scale):
        """Instructions (and the negative prompt, once per instruction) with the images the vision tower sees."""
        dtype = self.components.transformer.dtype
        negative = None
        with self.placement.use(self.components.text_encoder):
            prompt = encoder.encode_edit(prompts, vision).to(self.device, dtype)
            if negative_prompt is not None and true_cfg_scale > 1:
                negative = encoder.encode_edit([negative_prompt] * len(prompts), vision)
                negative = negative.to(self.device, dtype)
        return prompt, negative

    def prepare_references(
        self,
        images: list,
        *,
        source_area: int | None = None,
        vision_area: int | None = None,
    ) -> tuple[list[torch.Tensor], list[list[Image.Image]]]:
        """Edit-Plus references, one list per prompt -> (normalised latents ``[B, 16, h_k, w_k]`` for each reference
        position k, each prompt's references as the vision tower sees them).

        Sizes as ``QwenImageEditPlusPipeline`` computes them: each reference keeps its aspect ratio at
        ``source_area`` (default ``DIFFUSERS_EDIT_AREA``) for the VAE and at ``vision_area`` (default
        ``EDIT_PLUS_VISION_AREA``) for the vision tower, sides multiples of 32, both resized from the original."""
        per_prompt = [list(refs) if isinstance(refs, (list, tuple)) else [refs] for refs in images]
        counts = {len(refs) for refs in per_prompt}
        if len(counts) != 1:
            raise ValueError(f"every prompt of one call needs as many reference images; got {sorted(counts)}")
        count = counts.pop()
        if count == 0:
            raise ValueError("every prompt needs at least one reference image")
        source_area = DIFFUSERS_EDIT_AREA if source_area is None else source_area
        vision_area = EDIT_PLUS_VISION_AREA if vision_area is None else vision_area
        latents, vision = [], [[] for _ in per_prompt]
        for position in range(count):
            encoded, seen = self._encode_sources([refs[position] for refs in per_prompt], source_area, vision_area)
            latents.append(encoded)
            for row, image in enumerate(seen):
                vision[row].append(image)
        return latents, vision

    @torch.inference_mode()
    def edit(self, prompts: list[str], images: list, **kwargs) -> np.ndarray:
        """Edited images, uint8 RGB ``[B, H, W, 3]`` (see ``edit_latents``)."""
        return self.decode(self.edit_latents(prompts, images, **kwargs))

    def encode_start_images(
        self, images: list, *, height: int, width: int, generator: torch.Generator | list[torch.Generator] | None
    ) -> torch.Tensor:
        """Image-to-image starts -> normalised latents ``[B, 16, H/8, W/8]``, as ``QwenImageImg2ImgPipeline`` and
        ``QwenImageInpaintPipeline`` encode them: each image resized (Lanczos) to ``width x height`` whatever its
        aspect ratio, a sample of the VAE's posterior drawn with ``generator`` (one per image when a list, each
        image encoded on its own), normalised by ``1 / std``."""
        pils = [as_pil(image) for image in images]
        pixels = torch.stack(
            [
                torch.from_numpy(np.asarray(resize_lanczos(image, width, height), dtype=np.float32) / 255.0)
                for image in pils
            ]
        ).permute(0, 3, 1, 2)
        pixels = pixels * 2.0 - 1.0
        with self.placement.use(self.components.vae):
            if isinstance(generator, list):
                latents = torch.cat(
                    [
                        self.vae.encode(pixels[row : row + 1], sample=True, generator=gen, inverse_std=True)
                        for row, gen in enumerate(generator)
                    ]
                )
            else:
                latents = self.vae.encode(pixels, sample=True, generator=generator, inverse_std=True)
        return latents.to(self.device, self.components.transformer.dtype)

    @torch.no_grad()
    def image_to_image_latents(
        self,
        prompts: list[str],
        images: list,
        *,
        height: int,
        width: int,
        strength: float = DEFAULT_STRENGTH,
        num_steps: int = DEFAULT_STEPS,
        true_cfg_scale: float = DEFAULT_TRUE_CFG,
        negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
        seeds: list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """Latents ``[len(prompts), 16, H/8, W/8]`` of a text-to-image run started from ``images`` (one per prompt)
        at ``strength`` in (0, 1]: the image is noised to the schedule's level at step ``int(num_steps (1 -
        strength))`` and the run takes the remaining steps (``QwenImageImg2ImgPipeline``); 1 starts from noise
        (the image still sets the first draw), small values change little. Prompts use the text-to-image template."""
        options = dict(num_steps=num_steps, true_cfg_scale=true_cfg_scale, negative_prompt=negative_prompt)
        return self._from_images(prompts, images, None, height, width, strength, seeds, generator, on_step, **options)

    @torch.no_grad()
    def inpaint_latents(
        self,
        prompts: list[str],
        images: list,
        masks: list | None = None,
        *,
        height: int,
        width: int,
        strength: float = DEFAULT_STRENGTH,
        num_steps: int = DEFAULT_STEPS,
        true_cfg_scale: float = DEFAULT_TRUE_CFG,
        negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
        seeds: list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """Image to image (see ``image_to_image_latents``) that regenerates only a masked region
        (``QwenImageInpaintPipeline``): after every step the latents outside the mask are reset to the image noised to
        the next step's level, so the region kept comes back as the VAE's sample of the image.

        ``masks``: one per image, or None to read each image's alpha channel; see ``inpaint_mask`` for the
        conventions (transparent or white = regenerate). The mask is resized to the output (Lanczos), thresholded at
        ``MASK_THRESHOLD`` and taken to the latent grid by nearest-neighbour sampling, as diffusers does."""
        if masks is None:
            masks = [None] * len(images)
        if len(masks) != len(images):
            raise ValueError(f"{len(masks)} masks for {len(images)} images")
        pairs = [inpaint_mask(image, mask) for image, mask in zip(images, masks, strict=True)]
        options = dict(num_steps=num_steps, true_cfg_scale=true_cfg_scale, negative_prompt=negative_prompt)
        images, masks = [image for image, _ in pairs], [mask for _, mask in pairs]
        return self._from_images(prompts, images, masks, height, width, strength, seeds, generator, on_step, **options)

    def _from_images(
        self,
        prompts,
        images,
        masks,
        height,
        width,
        strength,
        seeds,
        generator,
        on_step,
        *,
        num_steps,
        true_cfg_scale,
        negative_prompt,
    ) -> torch.Tensor:
        """Image to image (``masks`` None) or inpainting (one repaint mask per image, ``inpaint_mask``'s)."""
        _one_image_each(prompts, images, "images", "prompts")
        strength_start(num_steps, strength)  # a bad strength fails before any model runs
        latent_size(height, width)  # a bad output size fails before any model runs
        generator = _seeded(seeds, len(prompts), generator)
        image_latents = self.encode_start_images(images, height=height, width=width, generator=generator)
        mask = None if masks is None else latent_mask(masks, height, width).to(self.device)
        prompt, negative = self._encode_prompts(prompts, negative_prompt, true_cfg_scale)
        start = dict(image_latents=image_latents, strength=strength, mask=mask)
        return self._sample(prompt, negative, height, width, num_steps, true_cfg_scale, generator, on_step, **start)

    @torch.no_grad()
    def edit_inpaint_latents(
        self,
        prompts: list[str],
        images: list,
        masks: list | None = None,
        *,
        strength: float = DEFAULT_STRENGTH,
        num_steps: int = DEFAULT_STEPS,
        true_cfg_scale: float = DEFAULT_TRUE_CFG,
        negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
        seeds: list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        source_area: int | None = None,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """Inpainting guided by an edit instruction (``QwenImageEditInpaintPipeline``): each image is resized
        (Lanczos, aspect kept, sides of 32) to ``source_area`` (None: ``DIFFUSERS_EDIT_AREA``), which is also the
        output's size; that image conditions the edit as ``template="edit"`` does (the vision tower, and its latents
        at frame 1) and starts the run as ``inpaint_latents`` does, the one VAE sample serving both. Masks as
        ``inpaint_mask`` reads them. The images of one call must resize to one size."""
        _one_image_each(prompts, images, "images", "instructions")
        masks = [None] * len(images) if masks is None else masks
        if len(masks) != len(images):
            raise ValueError(f"{len(masks)} masks for {len(images)} images")
        strength_start(num_steps, strength)  # a bad strength fails before any model runs
        pairs = [inpaint_mask(image, mask) for image, mask in zip(images, masks, strict=True)]
        area = DIFFUSERS_EDIT_AREA if source_area is None else source_area
        resized = [resize_lanczos(image, *edit_source_size(area, *image.size)) for image, _ in pairs]
        sizes = {image.size for image in resized}
        if len(sizes) != 1:
            raise ValueError(f"images of one batch must share an aspect ratio; they resize to {sorted(sizes)}")
        width, height = sizes.pop()
        generator = _seeded(seeds, len(prompts), generator)
        image_latents = self.encode_start_images(resized, height=height, width=width, generator=generator)
        mask = latent_mask([mask for _, mask in pairs], height, width).to(self.device)
        prompt, negative = self._encode_edit(self.edit_encoder, prompts, resized, negative_prompt, true_cfg_scale)
        start = dict(image_latents=image_latents, strength=strength, mask=mask)
        return self._sample(
            prompt, negative, height, width, num_steps, true_cfg_scale, generator, on_step, image_latents, **start
        )

    @torch.no_grad()
    def edit_plus_inpaint_latents(
        self,
        prompts: list[str],
        references: list[list],
        starts: list,
        repaints: list,
        *,
        height: int,
        width: int,
        strength: float = DEFAULT_STRENGTH,
        num_steps: int = DEFAULT_STEPS,
        true_cfg_scale: float = DEFAULT_TRUE_CFG,
        negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
        seeds: list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        source_area: int | None = None,
        vision_area: int | None = None,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """Inpainting guided by an Edit-Plus instruction: the references (one list per prompt) condition the run as
        ``edit_latents(template="edit_plus")`` does, and the run starts from ``starts`` (one image per prompt, already
        ``width x height``) at ``strength`` with the region outside ``repaints`` (masks as ``latent_mask`` reads
        them: white = change) kept, as ``inpaint_latents`` does. Diffusers has no such pipeline to match; each part
        is one that matches its pipeline (``tests/models/test_edit_plus.py``, ``tests/models/test_inpaint.py``)."""
        if not (len(prompts) == len(references) == len(starts) == len(repaints)):
            raise ValueError(
                f"{len(prompts)} instructions, {len(references)} reference lists, {len(starts)} images and "
                f"{len(repaints)} masks: give one of each per instruction"
            )
        strength_start(num_steps, strength)  # a bad strength fails before any model runs
        generator = _seeded(seeds, len(prompts), generator)
        source_latents, vision = self.prepare_references(references, source_area=source_area, vision_area=vision_area)
        image_latents = self.encode_start_images(starts, height=height, width=width, generator=generator)
        mask = latent_mask(repaints, height, width).to(self.device)
        prompt, negative = self._encode_edit(self.edit_plus_encoder, prompts, vision, negative_prompt, true_cfg_scale)
        start = dict(image_latents=image_latents, strength=strength, mask=mask)
        return self._sample(
            prompt, negative, height, width, num_steps, true_cfg_scale, generator, on_step, source_latents, **start
        )

    @torch.inference_mode()
    def edit_plus_inpaint(self, prompts: list[str], references: list[list], starts: list, repaints: list, **kwargs):
        """Images, uint8 RGB ``[B, H, W, 3]`` (see ``edit_plus_inpaint_latents``)."""
        return self.decode(self.edit_plus_inpaint_latents(prompts, references, starts, repaints, **kwargs))

    @torch.inference_mode()
    def image_to_image(self, prompts: list[str], images: list, **kwargs) -> np.ndarray:
        """Images, uint8 RGB ``[B, H, W, 3]`` (see ``image_to_image_latents``)."""
        return self.decode(self.image_to_image_latents(prompts, images, **kwargs))

    @torch.inference_mode()
    def inpaint(self, prompts: list[str], images: list, masks: list | None = None, **kwargs) -> np.ndarray:
        """Inpainted images, uint8 RGB ``[B, H, W, 3]`` (see ``inpaint_latents``)."""
        return self.decode(self.inpaint_latents(prompts, images, masks, **kwargs))

    @torch.inference_mode()
    def edit_inpaint(self, prompts: list[str], images: list, masks: list | None = None, **kwargs) -> np.ndarray:
        """Inpainted edits, uint8 RGB ``[B, H, W, 3]`` (see ``edit_inpaint_latents``)."""
        return self.decode(self.edit_inpaint_latents(prompts, images, masks, **kwargs))

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents -> uint8 RGB ``[B, H, W, 3]`` (sliced and tiled as ``self.vae`` is configured)."""
        with self.placement.use(self.components.vae):
            return tensor_to_images(self.vae.decode(latents))

    @torch.inference_mode()
    def __call__(self, prompts: list[str], **kwargs) -> np.ndarray:
        return self.decode(self.generate_latents(prompts, **kwargs))
