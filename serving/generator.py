"""The generator deployment: one loaded ``TextToImage`` (the sampler behind the trainer's sample grids) per replica.

Requests reach it one by one; ``@serve.batch`` collects those that arrive within ``batching.wait_timeout_s`` (up to
``batching.max_batch_images`` images) and the batch handler makes one sampler call per group of equal size, steps,
CFG scale and negative prompt (``GenerationJob.batch_key``). Edits (``EditJob``) come through the same queue, so a
batch never holds more than ``max_batch_images`` images of either kind; they group only with edits whose sources
resize to the same sizes, and go to ``TextToImage.edit`` (several images: ``template="edit_plus"``; a mask:
``TextToImage.edit_inpaint``, or ``TextToImage.edit_plus_inpaint`` with several images; masked edits group by ``strength`` too). On CPU a call's fixed costs (the negative prompt's
encoding, Python per step, the VAE's set-up) are shared by its images, and on GPU a larger batch fills the device;
per-image seeds keep each image the same whatever it is batched with.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections import defaultdict

import numpy as np
import torch
from PIL import Image
from ray import serve

from models.generation import TextToImage, inpaint_mask, resize_lanczos
from models.placement import place, resolve_device
from models.presets import drop_lm_head
from serving.config import AdapterSettings, ModelSettings, ServeSettings, parse_adapters
from serving.memory import DTYPES, Workload, check_model_memory, serve_workload
from serving.schema import EditJob, GenerationJob
from serving.sizes import parse_size

logger = logging.getLogger(__name__)


def load_model(settings: ModelSettings, workload: Workload | None = None) -> TextToImage:
    """The checkpoint when one is given, else the preset, placed as ``settings.placement`` says, with the adapters.

    Before any weight is read, the memory plan of ``workload`` (the largest call; default: one 1024² image) is
    checked against the GPU: a profile that cannot fit is refused with the plan's numbers (``serving/memory.py``).
    The models are read into host memory, the condition encoder without its language-model head, then placed: a
    GPU never holds what the profile keeps elsewhere."""
    device = resolve_device(settings.device)
    dtype = DTYPES[settings.resolved_dtype(device.type)]
    plan = check_model_memory(settings, workload or Workload(), device)
    if plan is not None:
        logger.info("memory plan: %s", " | ".join(line.strip() for line in plan.lines()))
    if device.type == "cpu" and settings.placement != "resident":
        logger.warning(
            "placement %s on the CPU: nothing to offload to; everything stays in host memory", settings.placement
        )
    if settings.checkpoint:
        model = TextToImage.from_checkpoint(settings.checkpoint, weights_dir=settings.weights_dir, dtype=dtype)
    else:
        model = TextToImage.from_preset(
            settings.preset, weights_dir=settings.weights_dir, dtype=dtype, seed=settings.seed
        )
    components = model.components
    drop_lm_head(components.text_encoder)
    model.placement = place(components, settings.placement, device, blocks_per_group=settings.blocks_per_group)
    model.vae.configure_decoding(
        max_batch_pixels=settings.vae.max_batch_pixels,
        tile_size=settings.vae.tile_size,
        tile_overlap=settings.vae.tile_overlap,
    )
    set_adapters(model, {}, settings.adapters)  # into the one base: an adapter costs its own tensors only
    return model


def warm_up(model: TextToImage, settings: ServeSettings) -> float:
    """One generation at the default size (and one edit when edits are on) before traffic; returns its seconds."""
    started = time.perf_counter()
    width, height = parse_size(settings.defaults.size, settings.limits.max_pixels)
    kwargs = dict(
        height=height,
        width=width,
        num_steps=settings.model.warmup.num_inference_steps,
        true_cfg_scale=settings.defaults.true_cfg_scale,
        negative_prompt=settings.defaults.negative_prompt,
        seeds=[0],
    )
    model(["warm-up"], **kwargs)
    if settings.edit.enabled:
        source = np.full((height, width, 3), 127, dtype=np.uint8)
        model.edit(
            ["warm-up"],
            [source],
            source_area=settings.edit.source_area,
            vision_area=settings.edit.vision_area,
            **kwargs,
        )
    return time.perf_counter() - started


def encode_png(image: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def count_images(jobs: list[GenerationJob]) -> int:
    """A batch's size in images: what costs memory and time."""
    return sum(len(job.seeds) for job in jobs)


def generate_group(model: TextToImage, jobs: list[GenerationJob]) -> np.ndarray:
    """One sampler call for jobs that share a ``batch_key`` (one adapter, or the base): uint8
    ``[num_images, H, W, 3]`` in job order."""
    first = jobs[0]
    model.use_adapter(first.adapter)
    prompts = [job.prompt for job in jobs for _ in job.seeds]
    kwargs = dict(
        height=first.height,
        width=first.width,
        num_steps=first.num_steps,
        true_cfg_scale=first.true_cfg_scale,
        negative_prompt=first.negative_prompt,
        seeds=[seed for job in jobs for seed in job.seeds],
    )
    if not isinstance(first, EditJob):
        return model(prompts, **kwargs)
    if first.mask is not None:
        return inpaint_group(model, jobs, prompts, kwargs)
    if first.references:
        references = [job.reference_pixels() for job in jobs for _ in job.seeds]
        # Edit-Plus's own default source area is 1024^2; the server's is the output's area, as for one image.
        area = first.source_area if first.source_area is not None else first.width * first.height
        return model.edit(
            prompts, references, template="edit_plus", source_area=area, vision_area=first.vision_area, **kwargs
        )
    sources = []
    for job in jobs:
        pixels = job.source_pixels()
        sources.extend(pixels for _ in job.seeds)
    return model.edit(prompts, sources, source_area=first.source_area, vision_area=first.vision_area, **kwargs)


def inpaint_group(model: TextToImage, jobs: list[EditJob], prompts: list[str], kwargs: dict) -> np.ndarray:
    """Masked edits of one ``batch_key``: the first image and its mask resized (Lanczos) to the output's size, then
    instruction-guided inpainting (``TextToImage.edit_inpaint``, at that size); with several images, the same
    inpainting of the first image with every image as an Edit-Plus reference (``TextToImage.edit_plus_inpaint``)."""
    first = jobs[0]
    width, height = kwargs.pop("width"), kwargs.pop("height")
    starts, repaints = [], []
    for job in jobs:
        image, repaint = inpaint_mask(job.source_pixels(), job.mask_pixels())
        image, repaint = resize_lanczos(image, width, height), resize_lanczos(repaint, width, height)
        starts.extend(image for _ in job.seeds)
        repaints.extend(repaint for _ in job.seeds)
    if not first.references:
        return model.edit_inpaint(
            prompts, starts, repaints, strength=first.strength, source_area=width * height, **kwargs
        )
    references = [job.reference_pixels() for job in jobs for _ in job.seeds]
    area = first.source_area if first.source_area is not None else width * height
    return model.edit_plus_inpaint(
        prompts,
        references,
        starts,
        repaints,
        height=height,
        width=width,
        strength=first.strength,
        source_area=area,
        vision_area=first.vision_area,
        **kwargs,
    )


def generate_jobs(model: TextToImage, jobs: list[GenerationJob]) -> list[list[bytes]]:
    """PNG bytes per job, one sampler call per group of jobs that share a ``batch_key``."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, job in enumerate(jobs):
        groups[job.batch_key()].append(index)
    results: list[list[bytes]] = [[] for _ in jobs]
    for indices in groups.values():
        images = generate_group(model, [jobs[i] for i in indices])
        position = 0
        for i in indices:
            count = len(jobs[i].seeds)
            results[i] = [encode_png(image) for image in images[position : position + count]]
            position += count
    return results


def set_adapters(model: TextToImage, loaded: dict[str, AdapterSettings], wanted: list[AdapterSettings]) -> None:
    """Make ``model`` serve exactly ``wanted``: unload the adapters no longer listed (or listed with another path or
    scale), load the new ones; ``loaded`` (name -> settings) is updated. The base is never reloaded."""
    wanted_by_name = {adapter.name: adapter for adapter in wanted}
    for name in [name for name, adapter in loaded.items() if wanted_by_name.get(name) != adapter]:
        model.unload_adapter(name)
        del loaded[name]
        logger.info("adapter %r unloaded", name)
    for name, adapter in wanted_by_name.items():
        if name not in loaded:
            model.load_adapter(name, adapter.path, adapter.scale)
            loaded[name] = adapter
            logger.info("adapter %r loaded from %s", name, adapter.path)


@serve.deployment(name="ImageGenerator", max_ongoing_requests=16, ray_actor_options={"num_cpus": 1})
class ImageGenerator:
    """Holds the pipeline; ``generate(job)`` returns one PNG per seed of the job (an ``EditJob``: edited images), or
    ``{"unknown_adapter": name}`` when the job's adapter is not loaded here.

    The adapters are ``model.adapters`` at start; the deployment's ``user_config`` ``{"adapters": [...]}``, when
    set, replaces them, and Serve applies a changed ``user_config`` (``serve deploy`` of an edited config file) to
    the running replicas through ``reconfigure``: adapters are loaded and unloaded, the base stays in memory."""

    def __init__(self, settings: ServeSettings):
        self.lock = threading.Lock()  # adapters change only between sampler calls
        self.model = load_model(settings.model, serve_workload(settings))
        self.loaded = {adapter.name: adapter for adapter in settings.model.adapters}
        if settings.model.warmup.enabled:
            logger.info("warm-up generation took %.2f s", warm_up(self.model, settings))
        self.generate.set_max_batch_size(settings.batching.max_batch_images)
        self.generate.set_batch_wait_timeout_s(settings.batching.wait_timeout_s)
        logger.info(
            "generator ready on %s (batches up to %d images)", self.model.device, settings.batching.max_batch_images
        )

    async def reconfigure(self, user_config: dict) -> None:
        """Serve: after ``__init__`` when ``user_config`` is set, and whenever it changes."""
        adapters = parse_adapters(user_config)

        def apply() -> None:
            with self.lock:
                set_adapters(self.model, self.loaded, adapters)

        await asyncio.to_thread(apply)

    async def adapters(self) -> list[str]:
        """The names of the adapters this replica serves."""
        return sorted(self.loaded)

    def _generate(self, jobs: list[GenerationJob]) -> list:
        with self.lock, torch.inference_mode():
            served = [job.adapter is None or job.adapter in self.loaded for job in jobs]
            images = iter(generate_jobs(self.model, [job for job, ok in zip(jobs, served, strict=True) if ok]))
            return [
                next(images) if ok else {"unknown_adapter": job.adapter} for job, ok in zip(jobs, served, strict=True)
            ]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05, batch_size_fn=count_images)
    async def generate(self, jobs: list[GenerationJob]) -> list:
        # A sampler call takes seconds: run in a worker thread, it leaves the replica's event loop free to collect
        # the next batch and answer health checks meanwhile.
        return await asyncio.to_thread(self._generate, jobs)
