"""Training checkpoints with ``torch.distributed.checkpoint`` (DCP), and the diffusers-layout export.

A training checkpoint is what a run resumes from: the model's and optimiser's state dicts as DCP shards (each rank
writes the shards it holds; ``.metadata`` records the global shapes, so a run can resume on another number of
workers), the EMA weights beside them, and per-rank progress (step, data position, RNG) in safetensors + JSON. It
is written through Ray Train's checkpoint: every rank writes into its own folder and reports it, and Ray Train
merges the folders into one (file names differ by rank).

The export is what serving, evaluation and ``QwenImagePipeline.from_pretrained`` open: a complete pipeline folder
(``model_index.json``, ``transformer/`` and the frozen parts linked from the run's base). Its transformer is
gathered one tensor at a time from the shards, every rank taking part, and rank 0 writes safetensors files of at
most ``max_shard_bytes``, so no rank holds more than one file's worth of the full weights.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import torch
import torch.distributed as dist

from training.parallel import stored_name, unwrap
from training.state_io import load_state, save_state

DCP_FOLDER = "dcp"
RANK_STATE = "rank{rank:05d}"
CHECKPOINT_INFO = "checkpoint.json"
WEIGHTS_NAME = "diffusion_pytorch_model"
FROZEN_PARTS = ("vae", "text_encoder", "tokenizer", "scheduler")  # linked into every export, never trained here


def _distributed() -> bool:
    """Whether DCP runs its collectives: only in a process group of more than one rank.

    A one-rank group (a single Ray Train worker) saves and loads without them (``no_dist``), and not only because
    they are useless there: on CPU, gloo runs them in its own threads, where the tensor copies of the planning step
    start OpenMP thread teams of their own. libgomp then manages more threads than there are CPUs and, for the rest
    of the process, stops spin-waiting at every parallel region's barrier: the training threads sleep and wake
    thousands of times a second. After its first checkpoint the demo's worker ran 142 samples/s instead of
    176, the machine a quarter idle (docs/nano.md, "Seven minutes")."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _options(trainable_only: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=trainable_only)


def save_checkpoint(
    folder: str | pathlib.Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    world: int,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
    rank_state: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
    trainable_only: bool = False,
) -> None:
    """Every rank: write this rank's part of the checkpoint into ``folder`` (a collective).

    ``extra``: more state dicts of (possibly sharded) tensors, e.g. ``{"ema": ...}``; ``rank_state``: this rank's
    own progress (plain values and tensors); ``info``: JSON that rank 0 writes (step, run, world size).
    ``trainable_only``: leave frozen parameters out (adapters, a VAE's decoder), as they come from the base."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    options = _options(trainable_only)
    state = {
        "model": get_model_state_dict(model, options=options),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=options),
        **(extra or {}),
    }
    dcp.save(state, checkpoint_id=str(folder / DCP_FOLDER), no_dist=not _distributed())
    save_state(rank_state or {}, folder, RANK_STATE.format(rank=rank))
    if rank == 0:
        (folder / CHECKPOINT_INFO).write_text(json.dumps({"world_size": world, **(info or {})}, indent=2) + "\n")


def report_checkpoint(metrics: dict, **save_kwargs) -> None:
    """Every rank: ``save_checkpoint(folder, **save_kwargs)`` into a temporary folder of its own, then
    ``ray.train.report`` with it; Ray Train merges the ranks' folders into one checkpoint (file names differ by rank)."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(folder, **save_kwargs)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def load_checkpoint(
    folder: str | pathlib.Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    rank: int,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
    trainable_only: bool = False,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Every rank: load a checkpoint into the (sharded or whole) model, optimiser and ``extra`` state dicts, in
    place, whatever number of workers wrote it. Returns ``(info, rank_state)``: the run's JSON and this rank's
    progress (None when the checkpoint has no file for this rank: it was written by fewer workers)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    folder = pathlib.Path(folder)
    if not (folder / DCP_FOLDER / ".metadata").is_file():
        raise ValueError(f"{folder} is not a training checkpoint (no {DCP_FOLDER}/.metadata)")
    options = _options(trainable_only)
    state: dict[str, Any] = {"model": get_model_state_dict(model, options=options), **(extra or {})}
    if optimizer is not None:
        state["optimizer"] = _saved_optimizer_states(
            get_optimizer_state_dict(model, optimizer, options=options), folder / DCP_FOLDER
        )
    dcp.load(state, checkpoint_id=str(folder / DCP_FOLDER), no_dist=not _distributed())
    set_model_state_dict(model, state["model"], options=options)
    if optimizer is not None:
        # Not strict: parameters without a saved state stay without one (``_saved_optimizer_states``).
        relaxed = StateDictOptions(ignore_frozen_params=trainable_only, strict=False)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=relaxed)
    for name, tensors in (extra or {}).items():  # DCP loads in place; a plain tensor may have been replaced
        tensors.update(state[name])
    info = json.loads((folder / CHECKPOINT_INFO).read_text())
    rank_file = folder / f"{RANK_STATE.format(rank=rank)}.json"
    return info, (load_state(folder, RANK_STATE.format(rank=rank)) if rank_file.is_file() else None)


def _saved_optimizer_states(optimizer_state: dict, dcp_folder: pathlib.Path) -> dict:
    """The optimiser state dict to load, without the parameters that had no state when it was saved.

    AdamW creates a parameter's state at its first gradient, and some parameters never get one (the last block's
    text-stream output feeds nothing); an empty optimiser, as a restarted run builds, is given states for every
    parameter before loading. Loading only the saved ones leaves the others stateless, as in the run that saved."""
    import torch.distributed.checkpoint as dcp

    saved = dcp.FileSystemReader(str(dcp_folder)).read_metadata().state_dict_metadata
    states = {
        name: entries
        for name, entries in optimizer_state["state"].items()
        if all(f"optimizer.state.{name}.{key}" in saved for key in entries)
    }
    return {**optimizer_state, "state": states}


def _shard_plan(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Consecutive tensors grouped into files of at most ``max_shard_bytes`` (a larger tensor gets its own)."""
    files, current, used = [], [], 0
    for name, size in sizes:
        if current and used + size > max_shard_bytes:
            files.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        files.append(current)
    return files


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from its shards (a collective: every rank, in the same order) or as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _lora_layers(transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The transformer's peft LoRA layers by module name, those whose adapters are active."""
    from peft.tuners.lora import LoraLayer

    layers = {}
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer) and not module.disable_adapters:
            if module.fan_in_fan_out:
                raise ValueError(f"{name}: LoRA with fan_in_fan_out cannot be merged here")
            layers[name] = module
    return layers


def _merged_delta(layer: torch.nn.Module, rank: int) -> torch.Tensor | None:
    """Every rank: the layer's LoRA update ``scaling * B @ A`` summed over its active adapters, on rank 0 only."""
    delta = None
    for adapter in layer.active_adapters:
        down, up = _full(layer.lora_A[adapter].weight), _full(layer.lora_B[adapter].weight)
        if rank == 0:
            update = (up.detach().float() @ down.detach().float()) * layer.scaling[adapter]
            delta = update if delta is None else delta + update
    return delta


def export_transformer(
    model: torch.nn.Module,
    folder: str | pathlib.Path,
    *,
    rank: int,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = 5 * 2**30,
) -> pathlib.Path | None:
    """Every rank: the model's full weights as a diffusers ``transformer/`` folder that rank 0 writes (a collective).

    Tensors are gathered in state-dict order, one at a time; rank 0 keeps them on the CPU until a file is full and
    writes it, the other ranks drop them. With several files, an index maps each tensor to its file (as diffusers
    and ``from_pretrained`` expect). LoRA adapters (peft) are merged into the weights they adapt, so the folder is
    the plain transformer. Returns the folder on rank 0, None elsewhere."""
    from safetensors.torch import save_file

    transformer = unwrap(model)
    state = transformer.state_dict()
    lora = _lora_layers(transformer)
    keys = {name: key for key in state if (name := stored_name(key)) is not None}
    sizes = [(name, state[key].numel() * dtype.itemsize) for name, key in keys.items()]
    plan = _shard_plan(sizes, max_shard_bytes)
    folder = pathlib.Path(folder)
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        transformer.save_config(folder)
        # FSDP2 swaps the module's class for a subclass named FSDP<class>: the config names the model's own class.
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text())
        config["_class_name"] = next(c.__name__ for c in type(transformer).__mro__ if not c.__name__.startswith("FSDP"))
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weight_map = {}
    for index, names in enumerate(plan):
        filename = (
            f"{WEIGHTS_NAME}.safetensors"
            if len(plan) == 1
            else (f"{WEIGHTS_NAME}-{index + 1:05d}-of-{len(plan):05d}.safetensors")
        )
        tensors = {}
        for name in names:
            key = keys[name]
            tensor = _full(state[key])
            layer = key.removesuffix(".base_layer.weight") if key.endswith(".base_layer.weight") else None
            delta = _merged_delta(lora[layer], rank) if layer in lora else None
            if rank == 0:
                if hasattr(tensor, "dequantize"):  # a quantised frozen base (torchao): its dequantised values
                    tensor = tensor.dequantize()
                tensor = tensor.detach().float() + delta if delta is not None else tensor.detach()
                tensors[name] = tensor.to("cpu", dtype).contiguous()
                weight_map[name] = filename
        if rank == 0:
            save_file(tensors, str(folder / filename), metadata={"format": "pt"})
    if rank == 0 and len(plan) > 1:
        total = sum(size for _, size in sizes)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / f"{WEIGHTS_NAME}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder if rank == 0 else None


def gather_trainable(model: torch.nn.Module, rank: int) -> dict[str, torch.Tensor] | None:
    """Every rank: the trainable parameters whole, on the CPU of rank 0 (None elsewhere); a collective. What GRPO
    pushes to its rollout actors: the adapters with LoRA, every weight without."""
    transformer = unwrap(model)
    gathered = {}
    for name, param in transformer.named_parameters():
        if param.requires_grad:
            full = _full(param.detach())
            if rank == 0:
                gathered[name] = full.to("cpu", copy=True)
    return gathered if rank == 0 else None


def export_adapter(model: torch.nn.Module, folder: str | pathlib.Path, *, rank: int) -> pathlib.Path | None:
    """Every rank (a collective): the LoRA adapters gathered whole and written by rank 0 as
    ``folder/pytorch_lora_weights.safetensors`` in diffusers' format (``models.lora.save_adapter``), under a
    temporary name and renamed into place. Returns the file on rank 0, None elsewhere."""
    from models.checkpoint import staged_folder
    from models.lora import ADAPTER_FILE, adapter_metadata, adapter_state, save_adapter

    transformer = unwrap(model)
    gathered = gather_trainable(model, rank)
    if rank != 0:
        return None
    if not gathered or not all(".lora_" in name for name in gathered):
        raise ValueError("export_adapter: the model trains weights other than LoRA adapters")
    with staged_folder(folder) as staging:
        save_adapter(staging, adapter_state(transformer, gathered), adapter_metadata(transformer))
    return pathlib.Path(folder) / ADAPTER_FILE


def link_or_copy_part(source: pathlib.Path, target: pathlib.Path) -> None:
    """``target`` becomes a relative symbolic link to ``source`` (a copy where links are not supported)."""
    try:
        target.symlink_to(os.path.relpath(source.resolve(), target.parent.resolve()), target_is_directory=True)
    except OSError:
        shutil.copytree(source, target)


def write_pipeline_folder(
    folder: str | pathlib.Path,
    *,
    transformer_folder: str | pathlib.Path,
    base_folder: str | pathlib.Path,
    preset: str,
    metadata: dict | None = None,
) -> pathlib.Path:
    """A complete ``QwenImagePipeline`` folder at ``folder``: the exported ``transformer/`` moved in, and every frozen
    part (``vae/ text_encoder/ tokenizer/ scheduler/``) linked from ``base_folder``, the run's base weights, so no
    export copies them. Written under a temporary name and renamed into place."""
    from models.checkpoint import staged_folder, write_model_index
    from models.presets import ALL_PARTS

    base = pathlib.Path(base_folder)
    with staged_folder(folder) as staging:
        shutil.move(str(transformer_folder), staging / "transformer")
        for part in FROZEN_PARTS:
            if not (base / part).is_dir():
                raise ValueError(f"the run's base {base} has no {part}/ to link into the export")
            link_or_copy_part(base / part, staging / part)
        write_model_index(staging, preset, list(ALL_PARTS), metadata)
    return pathlib.Path(folder)


def export_pipeline(
    model: torch.nn.Module,
    target: str | pathlib.Path,
    *,
    rank: int,
    dtype: torch.dtype,
    base_folder: str | pathlib.Path,
    preset: str,
    metadata: dict | None = None,
) -> pathlib.Path | None:
    """Every rank (a collective): ``export_transformer`` then, on rank 0, ``write_pipeline_folder`` at ``target``
    with the frozen parts linked from ``base_folder``. Returns the folder on rank 0, None elsewhere."""
    target = pathlib.Path(target)
    staging = target.parent / f".{target.name}.transformer"
    if rank == 0 and staging.exists():  # left by an attempt that died while exporting
        shutil.rmtree(staging)
    exported = export_transformer(model, staging, rank=rank, dtype=dtype)
    if rank != 0:
        return None
    return write_pipeline_folder(
        target, transformer_folder=exported, base_folder=base_folder, preset=preset, metadata=metadata
    )


def ensure_base(
    run_folder: str | pathlib.Path, preset: str, candidates: list[str | pathlib.Path | None]
) -> pathlib.Path:
    """The folder an export links its frozen parts to: the first of ``candidates`` that holds them all (the run's
    ``weights_dir``, or the checkpoint it started from), else, for a preset that builds its parts (tiny),
    ``<run_folder>/base``, written once with the parts the preset builds (the ones the producers encoded with)."""
    from models.checkpoint import save_components
    from models.presets import BUILT_PRESETS, build_components, missing_parts

    for candidate in candidates:
        if candidate is not None and not missing_parts(candidate, FROZEN_PARTS):
            return pathlib.Path(candidate).resolve()
    if preset not in BUILT_PRESETS:
        named = [str(c) for c in candidates if c is not None]
        raise ValueError(f"none of {named} holds {', '.join(p + '/' for p in FROZEN_PARTS)} for the exports to link")
    folder = pathlib.Path(run_folder) / "base"
    if not (folder / "model_index.json").is_file():
        save_components(folder, build_components(preset, parts=FROZEN_PARTS))
    return folder.resolve()
