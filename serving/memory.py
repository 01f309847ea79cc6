"""Memory plan of a generator replica: what each device holds for a serving profile, counted without loading it.

Everything is counted on PyTorch's meta device, so the plan of the published model takes about a second and needs
no weights (the configs come from the model folder when it has them, else from the preset's published configs):

- **Weights**: the parameters of each model in the serving dtype, the condition encoder without its language-model
  head (``models.presets.drop_lm_head``).
- **Working memory** of the largest call the settings allow (``Workload``: ``batching.max_batch_images`` images of
  ``limits.max_pixels`` each, ``limits.max_prompt_tokens`` prompt tokens, an edit's source tokens when edits are on):
  the transformer's and the VAE's forward passes are run on the meta device under ``LiveBytes``, which adds up the
  tensors alive at each moment and keeps the peak. Attention counts as a fused kernel keeps it (no
  query-by-key matrix), as PyTorch's flash and memory-efficient kernels run it on a GPU. The transformer is run with
  two blocks (inference frees each block's tensors before the next, so the peak does not grow with depth); the VAE
  at the size of one slice of the batch (``model.vae.max_batch_pixels``), tiled when tiling is on. The condition
  encoder's working memory is computed from its widths (prompt tokens x the feed-forward and attention widths, and
  its key-value cache), which is small beside its weights.
- **Per device**, by placement (``models/placement.py``): ``resident`` holds everything plus the largest working
  set; ``model_offload`` the largest (model + its working memory) at a time; ``encoder_on_cpu`` the transformer and
  VAE; ``block_offload`` the VAE, the transformer's parts outside its blocks and two groups of blocks (the one
  computing and the one being prefetched); ``two_gpus`` the encoder on the first GPU, the rest on the second.
- **Reserve**: 1 GiB for the CUDA context and library workspaces, and 10% of the working memory for the caching
  allocator's fragmentation (weights are allocated once, at load, and do not fragment).

Measured on the published configs (bf16): weights 40.9 GB (transformer), 15.5 GB (encoder without head), 0.25 GB
(VAE); the VAE needs 2.8 GiB per 1328² image decoded in one call (23 GiB for a batch of 8, hence slicing), the
transformer 1.3 GiB per 1328² image in flight. ``ImageGenerator`` refuses to start when the plan does not fit the
GPU it is given, with these numbers; ``python jobs/plan.py serve --config <file>`` prints the plan of a config file.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import pathlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GIB = 2**30
CUDA_CONTEXT_BYTES = 1 * GIB
FRAGMENTATION = 0.10
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensors alive during the block (created inside it), and their peak.

    Each operator's new outputs are added when created and taken off when Python frees them; views and in-place
    results share memory already counted. Tensors whose last two dimensions are both at least ``square_from`` (an
    attention matrix) are not counted: a fused attention kernel never materialises them."""

    def __init__(self, square_from: int = 1024):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.square_from = square_from

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(tensor) for tensor in tree_flatten((args, kwargs))[0] if isinstance(tensor, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or id(tensor) in inputs or tensor._base is not None:
                continue
            if tensor.ndim >= 2 and tensor.shape[-1] == tensor.shape[-2] > self.square_from:
                continue
            size = tensor.untyped_storage().nbytes()
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


@dataclasses.dataclass(frozen=True)
class Workload:
    """The largest sampler call a replica must hold: ``images`` of ``pixels`` each, ``text_tokens`` prompt tokens,
    and for edits the source's VAE pixels and the pixels the vision tower sees (0 when edits are off)."""

    images: int = 1
    pixels: int = 1024 * 1024
    text_tokens: int = 1024
    source_pixels: int = 0
    vision_pixels: int = 0

    @property
    def side(self) -> int:
        """The side of a square image of ``pixels`` in multiples of 16 (tokens are 16 x 16 pixels)."""
        return max(16, int(math.isqrt(self.pixels)) // 16 * 16)


@dataclasses.dataclass(frozen=True)
class ModelConfigs:
    transformer: dict
    vae: dict
    text_encoder: dict
    source: str  # where they were read from


def _read_config(folders: list[pathlib.Path], part: str) -> tuple[dict | None, str | None]:
    for folder in folders:
        path = folder / part / "config.json"
        if path.is_file():
            config = json.loads(path.read_text())
            return {key: value for key, value in config.items() if not key.startswith("_")}, str(path)
    return None, None


def model_configs(preset: str, folders: list[str | None]) -> ModelConfigs:
    """The three models' configs: from the first of ``folders`` holding ``<part>/config.json``, else the preset's."""
    from models import presets

    defaults = {
        "tiny": (presets.TINY_TRANSFORMER_CONFIG, presets.TINY_VAE_CONFIG, presets.TINY_TEXT_ENCODER_CONFIG),
        "nano": (presets.NANO_TRANSFORMER_CONFIG, presets.NANO_VAE_CONFIG, presets.TINY_TEXT_ENCODER_CONFIG),
        "qwen-image": (
            presets.QWEN_IMAGE_TRANSFORMER_CONFIG,
            presets.QWEN_IMAGE_VAE_CONFIG,
            presets.QWEN_IMAGE_TEXT_ENCODER_CONFIG,
        ),
    }[preset]
    paths = [pathlib.Path(folder) for folder in folders if folder]
    configs, sources = [], []
    for part, default in zip(("transformer", "vae", "text_encoder"), defaults, strict=True):
        config, source = _read_config(paths, part)
        configs.append(copy.deepcopy(default) if config is None else config)
        sources.append(f"{part}: {source or f'the {preset} preset'}")
    return ModelConfigs(*configs, source="; ".join(sources))


def _meta_transformer(config: dict, layers: int | None = None):
    from diffusers import QwenImageTransformer2DModel

    config = {**config, **({} if layers is None else {"num_layers": layers})}
    with torch.device("meta"):
        return QwenImageTransformer2DModel.from_config(config)


def _meta_vae(config: dict):
    from diffusers import AutoencoderKLQwenImage

    with torch.device("meta"):
        return AutoencoderKLQwenImage.from_config(config)


def _frozen(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


@functools.lru_cache(maxsize=16)
def _transformer_sizes(config_json: str, itemsize: int) -> tuple[int, int, int]:
    """(all weights, weights in the blocks, the largest block) in bytes."""
    model = _meta_transformer(json.loads(config_json))
    total = sum(param.numel() for param in model.parameters()) * itemsize
    blocks = [sum(param.numel() for param in block.parameters()) * itemsize for block in model.transformer_blocks]
    return total, sum(blocks), max(blocks)


@functools.lru_cache(maxsize=16)
def _encoder_bytes(config_json: str, itemsize: int) -> int:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**json.loads(config_json)))
    head = model.lm_head.weight.numel()
    return (sum(param.numel() for param in model.parameters()) - head) * itemsize


@functools.lru_cache(maxsize=16)
def _vae_bytes(config_json: str, itemsize: int) -> int:
    return sum(param.numel() for param in _meta_vae(json.loads(config_json)).parameters()) * itemsize


@functools.lru_cache(maxsize=64)
def transformer_working_bytes(config_json: str, dtype: torch.dtype, images: int, image_tokens: int, text: int) -> int:
    """Peak of the tensors alive in one transformer forward pass of ``images`` sequences (meta device)."""
    config = json.loads(config_json)
    model = _meta_transformer(config, layers=2).to(dtype)
    side = max(1, math.isqrt(image_tokens))
    rows = max(1, image_tokens // side)
    hidden = torch.empty(images, rows * side, config["in_channels"], device="meta", dtype=dtype)
    prompt = torch.empty(images, text, config["joint_attention_dim"], device="meta", dtype=dtype)
    timestep = torch.full((images,), 0.5, device="meta", dtype=dtype)
    with torch.no_grad(), LiveBytes() as counter:
        model(
            hidden_states=hidden,
            encoder_hidden_states=prompt,
            encoder_hidden_states_mask=None,
            timestep=timestep,
            img_shapes=[[(1, rows, side)]] * images,
            return_dict=False,
        )
    return counter.peak


@functools.lru_cache(maxsize=64)
def vae_working_bytes(config_json: str, dtype: torch.dtype, images: int, side: int, tile: int | None, overlap: int):
    """Peak of the tensors alive while decoding (or encoding, whichever is larger) ``images`` of ``side``² pixels in
    one VAE call (meta device), tiled as ``LatentVAE.configure_decoding`` would."""
    vae = _meta_vae(json.loads(config_json)).to(dtype)
    if tile is not None:
        vae.enable_tiling(tile, tile, tile - overlap, tile - overlap)
    peaks = []
    with torch.no_grad():
        latents = torch.empty(images, vae.config.z_dim, 1, side // 8, side // 8, device="meta", dtype=dtype)
        with LiveBytes() as counter:
            vae.decode(latents)
        peaks.append(counter.peak)
        pixels = torch.empty(images, 3, 1, side, side, device="meta", dtype=dtype)
        with LiveBytes() as counter:
            vae.encode(pixels)
        peaks.append(counter.peak)
    return max(peaks)


def encoder_working_bytes(text_config: dict, itemsize: int, prompts: int, tokens: int) -> int:
    """Working memory of the condition encoder for ``prompts`` of ``tokens``: the widest point of a decoder layer
    (gate and up projections and the residual stream) and the key-value cache it builds."""
    hidden, ffn = text_config["hidden_size"], text_config["intermediate_size"]
    heads = text_config["num_attention_heads"]
    kv = text_config.get("num_key_value_heads", heads) * hidden // heads
    layer = prompts * tokens * (3 * ffn + 6 * hidden) * itemsize
    cache = text_config["num_hidden_layers"] * prompts * tokens * 2 * kv * itemsize
    return layer + cache + prompts * tokens * hidden * itemsize * 2  # and the hidden states handed on


@dataclasses.dataclass
class ServingPlan:
    """Bytes per device (``cuda:N`` or ``cpu``), itemised; ``gpu_bytes`` what each GPU has (None: unknown)."""

    placement: str
    dtype: str
    workload: Workload
    devices: dict[str, list[tuple[str, int]]]
    gpu_bytes: dict[str, int | None]
    source: str

    def needed(self, device: str) -> int:
        """What ``device`` must have: its items, the fragmentation margin and (on a GPU) the CUDA context."""
        total = sum(size for _, size in self.devices[device])
        if device == "cpu":
            return total
        working = sum(size for name, size in self.devices[device] if name == "working")
        return total + int(working * FRAGMENTATION) + CUDA_CONTEXT_BYTES

    def problems(self) -> list[str]:
        """One line per GPU that cannot hold its share."""
        out = []
        for device, capacity in self.gpu_bytes.items():
            if capacity is not None and self.needed(device) > capacity:
                out.append(
                    f"{device} needs {self.needed(device) / GIB:.1f} GiB and has {capacity / GIB:.1f} GiB "
                    f"({self.describe(device)})"
                )
        return out

    def describe(self, device: str) -> str:
        items = ", ".join(f"{name} {size / GIB:.2f}" for name, size in self.devices[device])
        if device == "cpu":
            return items
        return (
            f"{items}, +{FRAGMENTATION:.0%} of working for fragmentation, +{CUDA_CONTEXT_BYTES / GIB:.0f} CUDA context"
        )

    def lines(self) -> list[str]:
        work = self.workload
        lines = [
            f"placement {self.placement}, {self.dtype}; largest call: {work.images} image(s) of {work.side}² px, "
            f"{work.text_tokens} prompt tokens" + (", edit sources on" if work.source_pixels else ""),
        ]
        for device in self.devices:
            capacity = self.gpu_bytes.get(device)
            has = "" if capacity is None else f" of {capacity / GIB:.1f} GiB"
            lines.append(f"  {device}: {self.needed(device) / GIB:.1f} GiB{has} = {self.describe(device)} (GiB)")
        return lines

    def as_dict(self) -> dict:
        return {
            "placement": self.placement,
            "dtype": self.dtype,
            "workload": dataclasses.asdict(self.workload),
            "needed_gib": {device: round(self.needed(device) / GIB, 2) for device in self.devices},
            "items_gib": {
                device: {name: round(size / GIB, 3) for name, size in items} for device, items in self.devices.items()
            },
            "gpu_gib": {d: None if c is None else round(c / GIB, 1) for d, c in self.gpu_bytes.items()},
            "fits": not self.problems(),
        }


def plan_serving(
    configs: ModelConfigs,
    *,
    placement: str,
    dtype: str,
    workload: Workload,
    max_batch_pixels: int | None = None,
    tile_size: int | None = None,
    tile_overlap: int = 64,
    blocks_per_group: int = 1,
    gpu_bytes: int | None = None,
    gpus: list[str] | None = None,
) -> ServingPlan:
    """The plan of one generator replica (see the module's docstring). ``gpus``: the GPU names (``cuda:0``...) the
    placement uses; ``gpu_bytes``: the memory of each (None: unknown, nothing is refused)."""
    torch_dtype = DTYPES[dtype]
    itemsize = torch_dtype.itemsize
    tf_json = _frozen(configs.transformer)
    transformer, block_weights, block = _transformer_sizes(tf_json, itemsize)
    encoder = _encoder_bytes(_frozen(configs.text_encoder), itemsize)
    vae = _vae_bytes(_frozen(configs.vae), itemsize)
    side = workload.side
    image_tokens = (side // 16) ** 2 + (workload.source_pixels // 256 if workload.source_pixels else 0)
    tf_work = transformer_working_bytes(tf_json, torch_dtype, workload.images, image_tokens, workload.text_tokens)
    per_slice = workload.images
    if max_batch_pixels is not None:
        per_slice = max(1, min(workload.images, max_batch_pixels // (side * side)))
    tile = tile_size if tile_size is not None and side > tile_size else None
    vae_work = vae_working_bytes(_frozen(configs.vae), torch_dtype, per_slice, side, tile, tile_overlap)
    vision_tokens = workload.vision_pixels // (28 * 28)
    text_config = configs.text_encoder.get("text_config", configs.text_encoder)
    # The encoder sees each prompt once plus the negative prompt (edits: once per image, with its source).
    prompts = workload.images + (workload.images if workload.source_pixels else 1)
    enc_work = encoder_working_bytes(text_config, itemsize, prompts, workload.text_tokens + 64 + vision_tokens)
    gpus = gpus or ["cuda:0"]
    first = gpus[0]
    if placement == "resident":
        devices = {
            first: [
                ("transformer", transformer),
                ("condition encoder", encoder),
                ("VAE", vae),
                ("working", max(tf_work, vae_work, enc_work)),
            ]
        }
    elif placement == "model_offload":
        largest = max(
            (("transformer", transformer, tf_work), ("condition encoder", encoder, enc_work), ("VAE", vae, vae_work)),
            key=lambda item: item[1] + item[2],
        )
        devices = {
            first: [(f"{largest[0]} (one model at a time)", largest[1]), ("working", largest[2])],
            "cpu": [("transformer", transformer), ("condition encoder", encoder), ("VAE", vae)],
        }
    elif placement == "encoder_on_cpu":
        devices = {
            first: [("transformer", transformer), ("VAE", vae), ("working", max(tf_work, vae_work))],
            "cpu": [("condition encoder", encoder), ("encoder working", enc_work)],
        }
    elif placement == "block_offload":
        streamed = min(block_weights, 2 * blocks_per_group * block)
        devices = {
            first: [
                ("transformer outside blocks", transformer - block_weights),
                (f"transformer blocks ({2 * blocks_per_group} at a time)", streamed),
                ("VAE", vae),
                ("working", max(tf_work, vae_work)),
            ],
            "cpu": [
                ("transformer blocks", block_weights),
                ("condition encoder", encoder),
                ("encoder working", enc_work),
            ],
        }
    elif placement == "two_gpus":
        second = gpus[1] if len(gpus) > 1 else "cuda:1"
        devices = {
            first: [("condition encoder", encoder), ("working", enc_work)],
            second: [("transformer", transformer), ("VAE", vae), ("working", max(tf_work, vae_work))],
        }
    else:
        raise ValueError(f"unknown placement {placement!r}")
    capacity = {device: gpu_bytes for device in devices if device != "cpu"}
    return ServingPlan(placement, dtype, workload, devices, capacity, configs.source)


def serve_workload(settings) -> Workload:
    """The largest call a ``ServeSettings`` lets one generator replica receive."""
    edit = settings.edit
    return Workload(
        images=settings.batching.max_batch_images,
        pixels=settings.limits.max_pixels,
        text_tokens=settings.limits.max_prompt_tokens,
        # Several images (Edit-Plus references) are that many sources per image.
        source_pixels=(edit.source_area or settings.limits.max_pixels) * edit.max_images if edit.enabled else 0,
        vision_pixels=(edit.vision_area or 0) * edit.max_images if edit.enabled else 0,
    )


def model_plan(model, workload: Workload, device: torch.device) -> ServingPlan:
    """The plan of a ``ModelSettings`` on ``device``, with each GPU's memory (``model.gpu_memory_gib``, else what
    the device reports; None on a machine without GPUs)."""
    from models.checkpoint import read_metadata

    preset = model.preset
    if model.checkpoint:
        preset = read_metadata(model.checkpoint).get("preset", "qwen-image")
    configs = model_configs(preset, [model.checkpoint, model.weights_dir])
    indices = [0, 1] if model.placement == "two_gpus" else [device.index or 0]
    gpus = [f"cuda:{index}" for index in indices]
    capacity = None
    if model.gpu_memory_gib is not None:
        capacity = int(model.gpu_memory_gib * GIB)
    elif device.type == "cuda":
        capacity = min(torch.cuda.get_device_properties(index).total_memory for index in indices)
    return plan_serving(
        configs,
        placement=model.placement,
        dtype=model.resolved_dtype("cuda" if model.gpu_memory_gib is not None else device.type),
        workload=workload,
        max_batch_pixels=model.vae.max_batch_pixels,
        tile_size=model.vae.tile_size,
        tile_overlap=model.vae.tile_overlap,
        blocks_per_group=model.blocks_per_group,
        gpu_bytes=capacity,
        gpus=gpus,
    )


def check_model_memory(model, workload: Workload, device: torch.device) -> ServingPlan | None:
    """Refuse (``ConfigError``, with the plan's numbers) a profile whose plan does not fit its GPUs; the plan when
    one was made. On the CPU without ``gpu_memory_gib`` nothing is planned: host memory is the operator's."""
    from models.config import ConfigError

    if device.type != "cuda" and model.gpu_memory_gib is None:
        return None
    plan = model_plan(model, workload, device)
    problems = plan.problems()
    if problems:
        raise ConfigError(
            "this serving profile does not fit its GPU memory: "
            + "; ".join(problems)
            + ". Plan: "
            + " | ".join(line.strip() for line in plan.lines())
            + ". Lower batching.max_batch_images or limits.max_pixels, slice or tile the VAE (model.vae), or pick a "
            "placement that offloads (model.placement: model_offload, encoder_on_cpu, block_offload, two_gpus)"
        )
    return plan
