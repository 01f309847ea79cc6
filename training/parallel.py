"""Parallelism for the transformer, as functions applied in a fixed order to a model built on the meta device.

The order is torchtitan's: tensor parallel (``apply_tensor_parallel``), activation checkpointing
(``apply_activation_checkpointing``), ``torch.compile`` per block, then FSDP2 or HSDP (``apply_fsdp``); only then
are the parameters materialised, shard by shard, and the weights loaded (``materialize_and_load``): each rank
reads from the safetensors only the slices it holds, or rank 0 builds small random weights and broadcasts them. No
rank ever holds the whole model. ``parallelize`` runs the whole sequence for a ``ParallelConfig``; DDP (the default,
for models that fit on one device) wraps a fully built model instead.

The device mesh has up to three dimensions, outermost first: ``dp_replicate`` (HSDP replicas, usually nodes),
``dp_shard`` (FSDP within a replica) and ``tp`` (tensor parallel, within a node). Its size is the number of workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import pathlib
import warnings
from collections.abc import Callable
from typing import Literal

import pydantic
import torch
import torch.distributed as dist
from diffusers import QwenImageTransformer2DModel

from models.config import StrictModel


class ParallelConfig(StrictModel):
    """How a trainer spreads the transformer over its workers (``parallel.*`` keys of every training config)."""

    # ddp: every worker holds the whole model (small models); fsdp: parameters, gradients and optimiser states are
    # sharded over the data-parallel workers (FSDP2), gathered one block at a time.
    strategy: Literal["ddp", "fsdp"] = "ddp"
    tensor_parallel: int = pydantic.Field(default=1, ge=1)  # TP degree: heads and feed-forward split this many ways
    replicate: int = pydantic.Field(default=1, ge=1)  # HSDP: replicas (e.g. nodes), each sharding the model itself
    # Activation checkpointing: 0 none, 1 every block, n every n-th block (recomputed in the backward pass).
    activation_checkpointing: int = pydantic.Field(default=0, ge=0)
    compile: bool = False  # torch.compile each block
    cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy: sharded parameters, gradients and optimiser states on host
    # FSDP: free each block's gathered parameters after its forward and gather them again for the backward (least
    # memory), or keep them to the backward (ZeRO-2: a third less communication, a block's full weights per block).
    reshard_after_forward: bool = True

    @pydantic.model_validator(mode="after")
    def _sharded_only(self) -> ParallelConfig:
        if self.strategy == "ddp" and (self.tensor_parallel > 1 or self.replicate > 1 or self.cpu_offload):
            raise ValueError("tensor_parallel, replicate and cpu_offload need parallel.strategy=fsdp")
        return self

    def mesh_shape(self, world: int) -> tuple[int, int, int]:
        """(dp_replicate, dp_shard, tp) for ``world`` workers; an error when they do not divide."""
        per_replica = self.replicate * self.tensor_parallel
        if world % per_replica:
            raise ValueError(
                f"{world} workers cannot form replicate={self.replicate} x tensor_parallel={self.tensor_parallel} "
                "groups: num_workers must be a multiple of their product"
            )
        return self.replicate, world // per_replica, self.tensor_parallel


@dataclasses.dataclass
class Parallel:
    """What a worker needs to know about how its model is spread: the mesh and its groups."""

    config: ParallelConfig
    device: torch.device
    world: int
    rank: int
    mesh: object | None = None  # torch.distributed.device_mesh.DeviceMesh (None for DDP and single workers)

    @property
    def dp_mesh(self):
        if self.mesh is None:
            return None
        names = ("dp_replicate", "dp_shard") if self.config.replicate > 1 else ("dp_shard",)
        return self.mesh[names]

    @property
    def tp_mesh(self):
        return self.mesh["tp"] if self.mesh is not None and self.config.tensor_parallel > 1 else None

    @property
    def dp_rank(self) -> int:
        """This worker's index among the data-parallel workers: workers of one TP group read the same batches."""
        if self.mesh is None:
            return self.rank
        replicate, shard, _ = self.config.mesh_shape(self.world)
        coordinate = self.mesh.get_coordinate()
        return coordinate[0] * shard + coordinate[1]

    @property
    def dp_world(self) -> int:
        replicate, shard, _ = self.config.mesh_shape(self.world)
        return replicate * shard


def build_mesh(config: ParallelConfig, device: torch.device, world: int, rank: int) -> Parallel:
    """The worker's ``Parallel``: a 3-D mesh for FSDP (sizes from ``ParallelConfig.mesh_shape``), none for DDP."""
    if config.strategy == "ddp":
        return Parallel(config, device, world, rank)
    if not dist.is_initialized():
        raise ValueError("parallel.strategy=fsdp needs a distributed process group (run under Ray Train)")
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, config.mesh_shape(world), mesh_dim_names=("dp_replicate", "dp_shard", "tp"))
    return Parallel(config, device, world, rank, mesh)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, through oneDNN); elsewhere (AVX2 only) bf16 is
    emulated: the nano recipe trained at 4.7 samples/s in bf16 on an AVX2-only CPU, 73 in fp32 on the same CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# auto: bf16 on GPU, fp32 on CPU; bf16_if_native: bf16 on GPU and on CPUs with native bf16 (AVX512-BF16, AMX), fp32 on
# others, where bf16 is emulated and many times slower.
MixedPrecision = Literal["auto", "fp32", "bf16", "bf16_if_native"]


def compute_dtype(mixed_precision: MixedPrecision, device: torch.device) -> torch.dtype:
    """The dtype the transformer computes in: ``auto`` is bf16 on GPU and fp32 on CPU; ``bf16_if_native`` is bf16 on
    GPU and on a CPU that computes bf16 natively (``cpu_has_bf16``), fp32 elsewhere."""
    if mixed_precision == "bf16_if_native":
        bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    else:
        bf16 = mixed_precision == "bf16" or (mixed_precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else torch.float32


FrozenDtype = Literal["auto", "bfloat16", "float32"]


def frozen_weights_dtype(setting: FrozenDtype, strategy: str, compute: torch.dtype) -> torch.dtype:
    """The dtype of the weights that do not train (a LoRA base, an RL reference) when the model computes in
    ``compute``: ``auto`` is the compute dtype under FSDP (bf16 on GPU: half the memory), fp32 under DDP, which
    computes with the stored weights; bf16 under DDP only under GPU autocast (``check_frozen_dtype``)."""
    if setting == "auto":
        return compute if strategy == "fsdp" else torch.float32
    return getattr(torch, setting)


def check_frozen_dtype(setting: FrozenDtype, strategy: str, *, autocast: bool = False) -> None:
    """bf16 frozen weights under DDP only where the forward runs under bf16 autocast (a GPU), which casts them."""
    if strategy == "ddp" and setting == "bfloat16" and not autocast:
        raise ValueError(
            "frozen_dtype=bfloat16 needs parallel.strategy=fsdp (which gathers frozen weights in the compute "
            "dtype; it runs on one worker too): DDP computes with the stored weights"
        )


def cast_frozen_(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Parameters that do not train are stored in ``dtype`` (on the meta device: nothing is allocated)."""
    for param in model.parameters():
        if not param.requires_grad:
            param.data = param.data.to(dtype)


def autocast(parallel: Parallel, dtype: torch.dtype):
    """The context of a forward pass: bf16 autocast for DDP; FSDP computes in the dtype it gathers in. On CPU in bf16,
    attention runs on PyTorch's math kernel: its CPU flash-attention backward in bf16 took 63 ms a call against 6 ms
    in fp32 on the nano model (batch 64, 36 tokens), while bf16 matrix products on AMX run 4.6x faster than fp32
    (``benchmarks/cpu_bf16.py``)."""
    stack = contextlib.ExitStack()
    if parallel.device.type == "cpu" and dtype == torch.bfloat16:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    if parallel.config.strategy == "ddp" and dtype != torch.float32:
        stack.enter_context(torch.autocast(parallel.device.type, dtype=dtype))
    return stack


def gradient_sync(model: torch.nn.Module, enabled: bool):
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but the last backward of a step."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if enabled or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


# Tensor parallel: Megatron's split of each block. Attention projections are split by heads (column-wise in, row-wise
# out), the feed-forward by its hidden units, and both streams (image and text) alike; the modulation projections
# are split by output features and gathered (their output is chunked into shift, scale and gate).
def tensor_parallel_plan() -> dict:
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan: dict = {}
    for stream in ("img", "txt"):
        plan[f"{stream}_mod.1"] = ColwiseParallel(output_layouts=Replicate())
        plan[f"{stream}_mlp.net.0.proj"] = ColwiseParallel()
        plan[f"{stream}_mlp.net.2"] = RowwiseParallel()
    for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
        plan[f"attn.{name}"] = ColwiseParallel()
    plan["attn.to_out.0"] = RowwiseParallel()
    plan["attn.to_add_out"] = RowwiseParallel()
    return plan


# Parameters that every TP rank holds whole but applies to its own heads only (the per-head query and key norms):
# their gradients are partial sums over the TP group.
TP_PARTIAL_GRADIENTS = ("attn.norm_q.", "attn.norm_k.", "attn.norm_added_q.", "attn.norm_added_k.")


def check_tensor_parallel(model: QwenImageTransformer2DModel, degree: int) -> None:
    heads = model.config.num_attention_heads
    if heads % degree:
        raise ValueError(f"tensor_parallel={degree} must divide the {heads} attention heads")


def apply_tensor_parallel(model: QwenImageTransformer2DModel, tp_mesh) -> None:
    """Split every block over ``tp_mesh`` (``tensor_parallel_plan``); the modules keep their names."""
    from torch.distributed.tensor.parallel import parallelize_module

    check_tensor_parallel(model, tp_mesh.size())
    for block in model.transformer_blocks:
        parallelize_module(block, tp_mesh, tensor_parallel_plan())


def reduce_tensor_parallel_gradients(model: torch.nn.Module, tp_mesh) -> None:
    """Sum over the TP group the gradients of the parameters in ``TP_PARTIAL_GRADIENTS`` (after backward)."""
    if tp_mesh is None:
        return
    group = tp_mesh.get_group()
    for name, param in model.named_parameters():
        if param.grad is not None and any(part in name for part in TP_PARTIAL_GRADIENTS):
            grad = param.grad
            local = grad.to_local() if hasattr(grad, "to_local") else grad
            dist.all_reduce(local, group=group)


def _checkpointed(forward: Callable) -> Callable:
    @functools.wraps(forward)
    def run(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def apply_activation_checkpointing(model: QwenImageTransformer2DModel, every: int) -> None:
    """Recompute every ``every``-th block's activations in the backward pass instead of keeping them (0: none).

    The block's ``forward`` is replaced on the instance, so parameter names (state dicts, checkpoints, exports)
    do not change, and FSDP's hooks, which wrap ``__call__``, gather the parameters for the recomputation too."""
    if every <= 0:
        return
    for index, block in enumerate(model.transformer_blocks):
        if index % every == 0:
            block.forward = _checkpointed(block.forward)


def apply_compile(model: QwenImageTransformer2DModel) -> None:
    for block in model.transformer_blocks:
        block.compile()


def apply_fsdp(
    model: QwenImageTransformer2DModel,
    dp_mesh,
    *,
    param_dtype: torch.dtype,
    cpu_offload: bool,
    reshard_after_forward: bool = True,
) -> None:
    """FSDP2 on each block, then the root; parameters gathered in ``param_dtype``, gradients reduced in fp32. On a
    2-D ``dp_mesh`` (replicate x shard) this is HSDP."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs = {
        "mesh": dp_mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32),
    }
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    blocks = list(model.transformer_blocks)
    for index, block in enumerate(blocks):
        # The last block's parameters are needed again at once by the backward pass: keep them gathered.
        fully_shard(block, reshard_after_forward=reshard_after_forward and index < len(blocks) - 1, **kwargs)
    fully_shard(model, **kwargs)


def build_meta_transformer(config: dict) -> QwenImageTransformer2DModel:
    """The transformer of ``config`` with every parameter on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return QwenImageTransformer2DModel.from_config(config)


def _rebuild_rope(model: QwenImageTransformer2DModel, device: torch.device) -> None:
    """The rotary embedding's frequency tables are plain attributes computed in ``__init__``, so a meta build leaves
    them on the meta device and ``to_empty`` does not touch them: build that (parameter-free) module again."""
    rope = model.pos_embed
    with torch.device(device):
        model.pos_embed = type(rope)(theta=rope.theta, axes_dim=list(rope.axes_dim), scale_rope=rope.scale_rope)


def materialize_and_load(
    model: QwenImageTransformer2DModel,
    device: torch.device,
    *,
    weights_folder: str | pathlib.Path | None = None,
    build_full: Callable[[], QwenImageTransformer2DModel] | None = None,
) -> None:
    """Allocate this rank's shards of the (parallelised, meta) model on ``device`` and fill them.

    ``weights_folder``: a diffusers ``transformer/`` folder (one or several safetensors files, any dtype); each rank
    reads only the slices of its shards. ``build_full``: a function that builds the whole model with its weights
    (small random presets), called on rank 0 only, whose weights are broadcast. Neither: allocated only, for a
    checkpoint to be loaded into."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if weights_folder is not None and build_full is not None:
        raise ValueError("give weights_folder or build_full, not both")
    model.to_empty(device=device)
    _rebuild_rope(model, device)
    if weights_folder is None and build_full is None:
        return
    if weights_folder is not None:
        load_diffusers_weights(model, weights_folder)
        return
    distributed = dist.is_initialized()
    full = build_full().state_dict() if not distributed or dist.get_rank() == 0 else {}
    if not distributed:
        model.load_state_dict(full)
        return
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def init_random_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights drawn in place on each rank's shards (every rank with the same seed; DTensor keeps the draws
    of different shards apart): for real-width models in benchmarks, where no rank may build the whole model."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if next(module.parameters(recurse=False), None) is None:
                continue
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:  # diffusers' RMSNorm: a scale of ones, as built
                for name, param in module.named_parameters(recurse=False):
                    param.fill_(1.0 if name == "weight" else 0.0)


def stored_name(key: str) -> str | None:
    """The name under which a diffusers ``transformer/`` folder holds the model's state-dict entry ``key``.

    peft's LoRA wraps a target layer and keeps its weights under ``<layer>.base_layer``; the adapters themselves
    (``lora_A``, ``lora_B``) are not in the base folder (None): they are initialised or restored separately."""
    if ".lora_" in key:
        return None
    return key.replace(".base_layer.", ".")


def load_diffusers_weights(model: torch.nn.Module, folder: str | pathlib.Path) -> None:
    """Fill the model's (sharded or whole) parameters from a diffusers ``transformer/`` folder, reading only the
    slices each rank holds, converted to each parameter's dtype; every parameter (adapters aside, ``stored_name``)
    must be in the files, and the files must hold no other weights."""
    import torch.distributed.checkpoint as dcp
    from safetensors import safe_open

    folder = pathlib.Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no .safetensors weights")
    stored = set()
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            stored.update(handle.keys())
    state = {name: tensor for key, tensor in model.state_dict().items() if (name := stored_name(key)) is not None}
    missing, unexpected = sorted(set(state) - stored), sorted(stored - set(state))
    if missing or unexpected:
        raise ValueError(
            f"{folder} does not match the model: missing {missing[:3]} ({len(missing)}), "
            f"unexpected {unexpected[:3]} ({len(unexpected)})"
        )
    with warnings.catch_warnings():  # one process on purpose: DCP's warning that it assumes so is noise
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=dcp.HuggingFaceStorageReader(str(folder)), no_dist=not dist.is_initialized())


def fill_from_full_(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the whole tensor ``full`` (the same on every rank) into ``param``, whole or this rank's shard of it."""
    with torch.no_grad():
        if hasattr(param, "device_mesh"):  # a DTensor: keep the local slice, no communication
            from torch.distributed.tensor import distribute_tensor

            full = distribute_tensor(
                full.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
            )
        param.copy_(full)


def parallelize(
    model: QwenImageTransformer2DModel,
    parallel: Parallel,
    *,
    param_dtype: torch.dtype = torch.float32,
    weights_folder=None,
    build_full=None,
    frozen: bool = False,
    prepare: Callable[[torch.nn.Module], object] | None = None,
) -> torch.nn.Module:
    """The whole sequence for a meta-device model: TP, activation checkpointing, compile, FSDP2, then materialise
    and load. DDP: the model is materialised whole and wrapped (``DistributedDataParallel`` when there are several
    workers). ``param_dtype``: the dtype FSDP gathers parameters in for compute (each shard keeps its own: fp32, or
    bf16 for weights that do not train). With neither
    ``weights_folder`` nor ``build_full`` the parameters are only allocated (a checkpoint is restored into them).
    ``frozen``: a model that is only evaluated (an RL reference), sharded like a trained one but never wrapped in
    DDP. ``prepare``: DDP only, a function applied to the loaded model before it moves to the device and is
    wrapped (quantising a frozen base); the model is then loaded on the CPU first. Returns the module to run."""
    config = parallel.config
    if parallel.tp_mesh is not None:
        apply_tensor_parallel(model, parallel.tp_mesh)
    apply_activation_checkpointing(model, 0 if frozen else config.activation_checkpointing)
    if config.compile:
        apply_compile(model)
    if config.strategy == "fsdp":
        if prepare is not None:
            raise ValueError("a model prepared after loading (a quantised base) is built with DDP, not FSDP")
        apply_fsdp(
            model,
            parallel.dp_mesh,
            param_dtype=param_dtype,
            cpu_offload=config.cpu_offload,
            reshard_after_forward=config.reshard_after_forward,
        )
        # With CPU offload the shards live on the host; FSDP moves each block's gathered parameters to the device.
        materialize_and_load(
            model,
            torch.device("cpu") if config.cpu_offload else parallel.device,
            weights_folder=weights_folder,
            build_full=build_full,
        )
        return model
    if prepare is None:
        materialize_and_load(model, parallel.device, weights_folder=weights_folder, build_full=build_full)
    else:  # loaded whole on the host, prepared there, and only then moved: the device never holds the unprepared model
        materialize_and_load(model, torch.device("cpu"), weights_folder=weights_folder, build_full=build_full)
        prepare(model)
        model.to(parallel.device)
    if parallel.world > 1 and not frozen:
        device_ids = [parallel.device.index] if parallel.device.type == "cuda" else None
        # static_graph: the same parameters get gradients every step, and some never do (the last block's
        # text-stream output feeds nothing), which plain DDP takes for an error.
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, static_graph=True)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (FSDP2 modules are the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def clip_grad_norm_(parameters: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """The total gradient norm over every parameter, sharded or not (clipped to ``max_norm`` when given).

    Parameters of one model can live on different meshes (2-D for the TP-split blocks, 1-D for the rest), which
    ``torch.nn.utils.clip_grad_norm_`` refuses: the norm is taken per mesh and the parts combined."""
    grads = [param.grad for param in parameters if param.grad is not None]
    groups: dict = {}
    for grad in grads:
        groups.setdefault(getattr(grad, "device_mesh", None), []).append(grad)
    norms = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm(group, 2.0)
        norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if not norms:
        return 0.0
    total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    if max_norm is not None:
        # As torch.nn.utils.clip_grads_with_norm_, with the factor as a number (a plain tensor cannot scale DTensors).
        factor = min(1.0, max_norm / (float(total) + 1e-6))
        torch._foreach_mul_(grads, factor)
    return float(total)
