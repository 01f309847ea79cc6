"""Per-GPU memory of a training run, planned from the model's configuration without allocating it.

Everything is counted on the meta device, so the plan for the published 20B model takes a second on a laptop:

- **States** (per GPU): fp32 parameters, fp32 gradients, two fp32 AdamW moments and an optional fp32 EMA, each
  divided by the tensor-parallel degree (for the weights that TP splits) and the FSDP shard degree; with CPU
  offload they live on the host. DDP keeps them whole and adds its gradient buckets.
- **Gathered parameters**: FSDP2 all-gathers one block at a time in the compute dtype and prefetches the next; in
  the backward pass it also holds that block's unsharded fp32 gradients for the reduce-scatter.
- **Activations per sample**: one forward pass of a 1-block and a 2-block copy of the model on the meta device, at
  the phase's resolution and text length, with autograd's saved-tensor hooks counting what is kept for the backward
  pass (parameters excluded). Attention is counted as a fused kernel keeps it (its output and log-sum-exp, not the
  attention matrix). Tensors split by TP (heads, feed-forward units) are divided by its degree. A checkpointed
  block keeps only its inputs, and one block's activations are rebuilt at a time in the backward pass.

The peak of a step is the states plus the larger of (activations of the batch plus gathered blocks) and (all
gradients plus the optimiser's temporaries). ``tests/training/test_memory_plan.py`` checks it against peaks
measured on CPU; ``benchmarks/train_scale.py`` against a GPU's when one is lent.

``plan_lora_memory`` plans LoRA training on one GPU the same way (the frozen base whole, in bf16, fp32 or a
weight-only quantised form; the adapters' states; activations counted on the model with its adapters);
``benchmarks/lora_memory.py`` reports it for the published model.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from training.parallel import tensor_parallel_plan

GIB = 2**30


def largest_batch(plan, gpu_bytes: int, reserve: float) -> int:
    """The largest ``batch_size`` for which the (frozen dataclass) ``plan``'s peak stays under ``gpu_bytes`` less
    ``reserve``."""
    usable = gpu_bytes * (1 - reserve)
    batch = 0
    while dataclasses.replace(plan, batch_size=batch + 1).peak <= usable:
        batch += 1
    return batch


@dataclasses.dataclass(frozen=True)
class ActivationCount:
    """Bytes kept for the backward pass, per sample: in one block, and outside the blocks."""

    per_block: int
    per_block_inputs: int  # what a checkpointed block keeps: its inputs
    outside: int


def _is_tp_split(shape: tuple[int, ...], heads: int, ffn: int) -> bool:
    return heads in shape[-2:] or shape[-1] == ffn


@functools.lru_cache(maxsize=64)
def _saved_bytes(
    config_items: tuple, layers: int, resolution: int, text_tokens: int, dtype, tp: int, lora: str | None = None
) -> int:
    """``lora``: a ``LoraSettings`` as JSON, to count the model with those adapters and its base frozen."""
    from diffusers import QwenImageTransformer2DModel

    config = {**dict(config_items), "num_layers": layers}
    with torch.device("meta"):
        model = QwenImageTransformer2DModel.from_config(config)
    if lora is not None:
        from models.lora import LoraSettings, add_lora

        add_lora(model, LoraSettings.model_validate_json(lora))
    model = model.to(dtype)
    params = {id(param) for param in model.parameters()}
    heads = config["num_attention_heads"]
    head_dim = config["attention_head_dim"]
    ffn = 4 * heads * head_dim
    side = resolution // 16
    joint = side * side + text_tokens
    total = 0
    seen: set[int] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) in params or id(base) in params:
            return tensor  # a weight saved for its gradient: the parameter itself, not an activation
        shape = tuple(tensor.shape)
        if len(shape) >= 2 and shape[-1] == shape[-2] == joint:
            return tensor  # the attention matrix, which a fused attention kernel never keeps
        storage = tensor.untyped_storage()
        if storage._cdata in seen:
            return tensor  # the same memory saved again (one input of several projections, chunks of one output)
        seen.add(storage._cdata)
        size = storage.nbytes()
        total += size // tp if tp > 1 and _is_tp_split(shape, heads, ffn) else size
        return tensor

    hidden = torch.empty(1, side * side, config["in_channels"], device="meta", dtype=dtype)
    text = torch.empty(1, text_tokens, config["joint_attention_dim"], device="meta", dtype=dtype)
    mask = torch.ones(1, text_tokens, dtype=torch.long, device="meta")
    timestep = torch.full((1,), 0.5, device="meta", dtype=dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(
            hidden_states=hidden.requires_grad_(False),
            encoder_hidden_states=text,
            encoder_hidden_states_mask=mask,
            timestep=timestep,
            img_shapes=[(1, side, side)],
            return_dict=False,
        )
    # A fused attention kernel keeps its output and the log-sum-exp of each row (fp32) per block.
    out = joint * heads * head_dim * dtype.itemsize // tp
    logsumexp = heads * joint * 4 // tp
    return total + layers * (out + logsumexp)


def count_activations(
    config: dict, resolution: int, text_tokens: int, *, dtype=torch.bfloat16, tp: int = 1, lora=None
) -> ActivationCount:
    """``ActivationCount`` for one sample of ``resolution``² with ``text_tokens`` prompt tokens; with ``lora`` (a
    ``LoraSettings``), of the model with those adapters and its base frozen (nothing is kept for the frozen
    weights' gradients, and nothing at all before the first adapted layer)."""
    items = tuple(sorted((key, tuple(v) if isinstance(v, list) else v) for key, v in config.items()))
    key = None if lora is None else lora.model_dump_json()
    one = _saved_bytes(items, 1, resolution, text_tokens, dtype, tp, key)
    two = _saved_bytes(items, 2, resolution, text_tokens, dtype, tp, key)
    side = resolution // 16
    width = config["num_attention_heads"] * config["attention_head_dim"]
    inputs = (side * side + text_tokens) * width * dtype.itemsize  # the image and text streams entering the block
    return ActivationCount(per_block=two - one, per_block_inputs=inputs, outside=2 * one - two)


@dataclasses.dataclass(frozen=True)
class ParameterCount:
    total: int
    per_block: int  # the largest block's
    per_gpu: int  # after tensor parallel (before FSDP sharding)
    per_block_per_gpu: int
    # The last block's text-stream output (attention output projection and feed-forward) feeds nothing, so these
    # parameters get no gradient and no optimiser state.
    without_gradient_per_gpu: int


# What the last block computes for the text stream after attention, which the model's output never uses.
UNUSED_IN_LAST_BLOCK = ("attn.to_add_out", "txt_mlp")


def count_parameters(config: dict, tp: int = 1) -> ParameterCount:
    items = tuple(sorted((key, tuple(v) if isinstance(v, list) else v) for key, v in config.items()))
    return _count_parameters(items, tp)


@functools.lru_cache(maxsize=16)
def _count_parameters(config_items: tuple, tp: int) -> ParameterCount:
    from diffusers import QwenImageTransformer2DModel

    config = dict(config_items)
    with torch.device("meta"):
        model = QwenImageTransformer2DModel.from_config(config)
    split = set()
    for index, block in enumerate(model.transformer_blocks):
        for name in tensor_parallel_plan():
            module = block.get_submodule(name)
            split.update(f"transformer_blocks.{index}.{name}.{p}" for p, _ in module.named_parameters())
    total = per_gpu = 0
    for name, param in model.named_parameters():
        total += param.numel()
        per_gpu += param.numel() // tp if name in split else param.numel()
    block = sum(param.numel() for param in model.transformer_blocks[0].parameters())
    block_split = sum(
        param.numel() // tp if f"transformer_blocks.0.{name}" in split else param.numel()
        for name, param in model.transformer_blocks[0].named_parameters()
    )
    last = len(model.transformer_blocks) - 1
    unused = sum(
        param.numel() // tp if name in split else param.numel()
        for name, param in model.named_parameters()
        if any(name.startswith(f"transformer_blocks.{last}.{part}.") for part in UNUSED_IN_LAST_BLOCK)
    )
    return ParameterCount(total, block, per_gpu, block_split, unused)


@dataclasses.dataclass
class MemoryPlan:
    """One configuration's per-GPU memory, in bytes."""

    resolution: int
    text_tokens: int
    world: int
    tensor_parallel: int
    dp_shard: int
    strategy: str
    activation_checkpointing: int
    cpu_offload: bool
    parameters: int
    gradients: int
    optimizer: int
    ema: int
    gathered: int
    activations_per_sample: int
    activations_per_sample_no_checkpointing: int
    activations_per_block: int  # per sample: what one block keeps (or rebuilds, when checkpointed)
    batch_size: int

    @property
    def activations(self) -> int:
        return self.activations_per_sample * self.batch_size

    @property
    def peak(self) -> int:
        """States, plus the larger of: the start of the backward pass (every activation of the batch, a gathered
        block) and its end (every gradient, the first block's activations, a gathered block). The optimiser step
        itself works tensor by tensor and adds little."""
        start = self.activations + self.gathered
        end = self.gradients + self.activations_per_block * self.batch_size + self.gathered
        if self.cpu_offload:  # states and gradients on the host
            return max(start, end - self.gradients)
        return self.parameters + self.optimizer + self.ema + max(start, end)

    def max_batch(self, gpu_bytes: int, reserve: float = 0.1) -> int:
        """The largest batch per GPU whose peak stays under ``gpu_bytes`` less ``reserve`` (allocator slack)."""
        return largest_batch(self, gpu_bytes, reserve)

    def as_dict(self, gpu_bytes: int | None = None) -> dict:
        row = {key: value for key, value in dataclasses.asdict(self).items()}
        row["peak"] = self.peak
        if gpu_bytes is not None:
            row["max_batch"] = self.max_batch(gpu_bytes)
        return row


def plan_memory(
    config: dict,
    *,
    resolution: int,
    world: int,
    batch_size: int = 1,
    text_tokens: int = 256,
    strategy: str = "fsdp",
    tensor_parallel: int = 1,
    replicate: int = 1,
    activation_checkpointing: int = 0,
    cpu_offload: bool = False,
    ema: bool = False,
    compute_dtype: torch.dtype = torch.bfloat16,
) -> MemoryPlan:
    """The per-GPU ``MemoryPlan`` of training ``config`` on ``world`` GPUs at ``resolution``."""
    if world % (tensor_parallel * replicate):
        raise ValueError(f"{world} GPUs do not divide into tensor_parallel={tensor_parallel} x replicate={replicate}")
    shard = world // (tensor_parallel * replicate) if strategy == "fsdp" else 1
    params = count_parameters(config, tensor_parallel)
    per_gpu = math.ceil(params.per_gpu / shard)
    trained = math.ceil((params.per_gpu - params.without_gradient_per_gpu) / shard)  # those with gradients
    counted = count_activations(config, resolution, text_tokens, dtype=compute_dtype, tp=tensor_parallel)
    layers = config["num_layers"]
    full = counted.outside + layers * counted.per_block
    if activation_checkpointing:
        checkpointed = math.ceil(layers / activation_checkpointing)
        per_sample = (
            counted.outside
            + (layers - checkpointed) * counted.per_block
            + checkpointed * counted.per_block_inputs
            + counted.per_block  # the block being recomputed in the backward pass
        )
    else:
        per_sample = full
    if strategy == "fsdp":
        block = params.per_block_per_gpu
        gathered = 2 * block * compute_dtype.itemsize + block * 4
        gradients = trained * 4
    else:
        # DDP: autocast keeps a compute-dtype copy of the weights during forward and backward, and the gradient
        # buckets hold a second copy of the gradients.
        gathered = per_gpu * compute_dtype.itemsize if compute_dtype != torch.float32 else 0
        gradients = trained * 4 * (2 if world > 1 else 1)
    return MemoryPlan(
        resolution=resolution,
        text_tokens=text_tokens,
        world=world,
        tensor_parallel=tensor_parallel,
        dp_shard=shard,
        strategy=strategy,
        activation_checkpointing=activation_checkpointing,
        cpu_offload=cpu_offload,
        parameters=per_gpu * 4,
        gradients=gradients,
        optimizer=trained * 8,
        ema=per_gpu * 4 if ema else 0,
        gathered=gathered,
        activations_per_sample=per_sample,
        activations_per_sample_no_checkpointing=full,
        activations_per_block=counted.per_block,
        batch_size=batch_size,
    )


def gpus_needed(config: dict, *, resolution: int, gpu_bytes: int, max_gpus: int = 4096, **kwargs) -> int | None:
    """The fewest GPUs on which one sample per GPU fits, trying multiples of (TP degree x replicas): every one up
    to 8 of them, then doubling; None if no count up to ``max_gpus`` does."""
    group = kwargs.get("tensor_parallel", 1) * kwargs.get("replicate", 1)
    counts = [group * k for k in range(1, 9)]
    while counts[-1] * 2 <= max_gpus:
        counts.append(counts[-1] * 2)
    for world in counts:
        if world <= max_gpus and plan_memory(config, resolution=resolution, world=world, **kwargs).max_batch(gpu_bytes):
            return world
    return None


# LoRA: the base frozen, whole on one GPU, and only the adapters trained.
#
# The frozen base is stored as the loop stores it (``frozen_dtype``: bf16 under FSDP, fp32 under DDP) or, for the
# ``int8`` / ``float8`` rows, as ``lora.quantize`` stores it (torchao's weight-only tensors: one byte per element
# of every linear layer's weight plus a scale per output row; biases and norm scales in bf16; the layers outside
# the blocks, a small share, are counted as quantised too). The adapters train in fp32 (weights, gradients, two AdamW
# moments: 16 bytes each). Activations are counted as for full training (``count_activations``) on the model with
# its adapters: the frozen layers keep nothing for their weights' gradients and nothing before the first adapted
# layer needs a gradient at all, but every input of an adapted layer (its down projection's gradient) and what
# the backward pass needs to reach the earlier blocks is kept, so they are the same order as full training's.
# Covered: the transformer only; the condition encoder and the VAE never run in training (latents and prompt
# embeddings come from the store).

BASE_DTYPES = ("float32", "bfloat16", "int8", "float8")


@dataclasses.dataclass(frozen=True)
class LoraParameterCount:
    base: int  # every parameter of the base model
    linear_weights: int  # elements of the base's linear-layer weights (what weight-only quantisation stores)
    linear_rows: int  # their output rows (one quantisation scale each)
    largest_linear: int  # elements of the largest linear weight
    per_block: int  # base parameters of one block
    adapters: int  # the trainable LoRA parameters
    adapters_per_block: int  # the largest block's


def count_lora_parameters(config: dict, lora=None) -> LoraParameterCount:
    """The base's and the adapters' parameters of ``config`` with ``lora`` (a ``LoraSettings``; its defaults when
    None), counted on the meta device with ``models.lora.add_lora``, as the training loop adds them."""
    from models.lora import LoraSettings

    lora = lora or LoraSettings()
    items = tuple(sorted((key, tuple(v) if isinstance(v, list) else v) for key, v in config.items()))
    return _count_lora_parameters(items, lora.model_dump_json())


@functools.lru_cache(maxsize=16)
def _count_lora_parameters(config_items: tuple, lora: str) -> LoraParameterCount:
    from diffusers import QwenImageTransformer2DModel

    from models.lora import LoraSettings, add_lora

    with torch.device("meta"):
        model = QwenImageTransformer2DModel.from_config(dict(config_items))
    add_lora(model, LoraSettings.model_validate_json(lora))
    base = sum(param.numel() for param in model.parameters() if not param.requires_grad)
    adapters = sum(param.numel() for param in model.parameters() if param.requires_grad)
    linear = [
        module.weight
        for module in model.modules()
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad  # the adapters' own are not
    ]
    blocks = [
        (
            sum(p.numel() for p in block.parameters() if not p.requires_grad),
            sum(p.numel() for p in block.parameters() if p.requires_grad),
        )
        for block in model.transformer_blocks
    ]
    return LoraParameterCount(
        base=base,
        linear_weights=sum(weight.numel() for weight in linear),
        linear_rows=sum(weight.shape[0] for weight in linear),
        largest_linear=max(weight.numel() for weight in linear),
        per_block=max(block[0] for block in blocks),
        adapters=adapters,
        adapters_per_block=max(block[1] for block in blocks),
    )


@dataclasses.dataclass
class LoraMemoryPlan:
    """One GPU's memory of LoRA training, in bytes (parameter counts where named so)."""

    resolution: int
    text_tokens: int
    base_dtype: str
    strategy: str
    rank: int
    activation_checkpointing: int
    base_parameter_count: int
    lora_parameter_count: int
    base_weights: int
    lora_states: int  # fp32 adapters, their gradients and two AdamW moments
    # bf16 / fp32 base: FSDP's gathered blocks (this one and the prefetched next, in the compute dtype, and the
    # gathered block's adapter gradients), or under DDP autocast's compute-dtype copy of the weights; quantised
    # base: one linear weight dequantised to the compute dtype (the largest).
    workspace: int
    activations_per_sample: int  # kept from the forward to the backward pass (checkpointed blocks: their inputs)
    activations_per_sample_no_checkpointing: int
    recompute_per_sample: int  # one block's activations, rebuilt in the backward pass (with checkpointing)
    batch_size: int

    @property
    def activations(self) -> int:
        return (self.activations_per_sample + self.recompute_per_sample) * self.batch_size

    @property
    def peak(self) -> int:
        """Everything at once at the start of the backward pass: base, adapter states (gradients counted as if
        alive all step), workspace, the batch's kept activations and one block rebuilt."""
        return self.base_weights + self.lora_states + self.workspace + self.activations

    def max_batch(self, gpu_bytes: int, reserve: float = 0.1) -> int:
        """The largest batch whose peak stays under ``gpu_bytes`` less ``reserve`` (allocator slack)."""
        return largest_batch(self, gpu_bytes, reserve)

    def fits(self, gpu_bytes: int, reserve: float = 0.1) -> bool:
        """Whether this plan's batch fits ``gpu_bytes`` less ``reserve``."""
        return self.peak <= gpu_bytes * (1 - reserve)

    def as_dict(self, gpu_bytes: int | None = None) -> dict:
        row = dataclasses.asdict(self)
        row["activations"] = self.activations
        row["peak"] = self.peak
        if gpu_bytes is not None:
            row["max_batch"] = self.max_batch(gpu_bytes)
        return row


def plan_lora_memory(
    config: dict,
    *,
    resolution: int,
    lora=None,
    batch_size: int = 1,
    text_tokens: int = 256,
    base_dtype: str = "bfloat16",
    strategy: str = "fsdp",
    activation_checkpointing: int = 1,
    compute_dtype: torch.dtype = torch.bfloat16,
) -> LoraMemoryPlan:
    """The ``LoraMemoryPlan`` of training ``lora`` adapters (a ``LoraSettings``; its defaults when None) on
    ``config`` on one GPU at ``resolution``, the base stored in ``base_dtype`` (one of ``BASE_DTYPES``)."""
    from models.lora import LoraSettings

    if base_dtype not in BASE_DTYPES:
        raise ValueError(f"base_dtype {base_dtype!r} is not one of {BASE_DTYPES}")
    lora = lora or LoraSettings()
    params = count_lora_parameters(config, lora)
    itemsize = compute_dtype.itemsize
    if base_dtype in ("int8", "float8"):
        others = params.base - params.linear_weights  # biases and norm scales, in bf16
        base_weights = params.linear_weights + 4 * params.linear_rows + 2 * others
        workspace = params.largest_linear * itemsize
    else:
        base_weights = params.base * getattr(torch, base_dtype).itemsize
        if strategy == "fsdp":
            block = params.per_block + params.adapters_per_block
            workspace = 2 * block * itemsize + params.adapters_per_block * 4
        else:
            workspace = (params.base + params.adapters) * itemsize if compute_dtype != torch.float32 else 0
    counted = count_activations(config, resolution, text_tokens, dtype=compute_dtype, lora=lora)
    layers = config["num_layers"]
    full = counted.outside + layers * counted.per_block
    if activation_checkpointing:
        checkpointed = math.ceil(layers / activation_checkpointing)
        kept = counted.outside + (layers - checkpointed) * counted.per_block + checkpointed * counted.per_block_inputs
        recompute = counted.per_block
    else:
        kept, recompute = full, 0
    return LoraMemoryPlan(
        resolution=resolution,
        text_tokens=text_tokens,
        base_dtype=base_dtype,
        strategy=strategy,
        rank=lora.rank,
        activation_checkpointing=activation_checkpointing,
        base_parameter_count=params.base,
        lora_parameter_count=params.adapters,
        base_weights=base_weights,
        lora_states=params.adapters * 16,
        workspace=workspace,
        activations_per_sample=kept,
        activations_per_sample_no_checkpointing=full,
        recompute_per_sample=recompute,
        batch_size=batch_size,
    )
