"""The model RL trains: the transformer from a checkpoint, optional LoRA adapters, the frozen reference.

The policy is built as pretraining builds its model (``training.parallel``): on the meta device, LoRA adapters added
there, spread over the workers (DDP, or FSDP2 sharding) and only then materialised, each rank reading its slices of
the start checkpoint's safetensors. With LoRA (peft, through diffusers' ``add_adapter``) only the adapters train,
the frozen base is kept in ``frozen_dtype`` (bf16 under FSDP), and the reference is the same module with adapters
disabled: no second copy of the weights. Without LoRA the reference is a frozen copy of the start checkpoint,
sharded like the policy. Exports hold the transformer with adapters merged (``training.checkpointer``), so every
role opens them as it opens a pretraining export.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Iterator

import torch
from diffusers import QwenImageTransformer2DModel

from models.checkpoint import load_checkpoint, read_metadata
from models.lora import LoraSettings, add_lora, init_lora_
from training.checkpointer import gather_trainable
from training.parallel import (
    Parallel,
    ParallelConfig,
    build_meta_transformer,
    cast_frozen_,
    parallelize,
    unwrap,
)


def single_process(device: torch.device | str = "cpu") -> Parallel:
    """One worker, no process group: the policy whole on ``device`` (tests, notebooks)."""
    return Parallel(ParallelConfig(), torch.device(device), world=1, rank=0)


class Policy:
    """The trained transformer (``model``: what the optimiser steps, wrapped for DDP when there are several
    workers; ``transformer``: the module inside) and its reference."""

    def __init__(
        self,
        checkpoint: str | pathlib.Path,
        *,
        lora: LoraSettings | None,
        need_reference: bool,
        parallel: Parallel | None = None,
        compute_dtype: torch.dtype = torch.float32,
        frozen_dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ):
        self.parallel = parallel or single_process()
        self.preset = read_metadata(checkpoint).get("preset", "qwen-image")
        folder = transformer_folder(checkpoint)
        config = json.loads((folder / "config.json").read_text())
        self.lora = lora
        model = build_meta_transformer(config)
        if lora is not None:
            add_lora(model, lora)
            cast_frozen_(model, frozen_dtype)
        self.model = parallelize(model, self.parallel, param_dtype=compute_dtype, weights_folder=folder)
        self.transformer = unwrap(self.model)
        if lora is not None:
            init_lora_(self.transformer, seed)
        else:
            self.transformer.requires_grad_(True)
        self.frozen_reference = None
        if need_reference and lora is None:
            reference = build_meta_transformer(config).requires_grad_(False)
            cast_frozen_(reference, frozen_dtype)
            self.frozen_reference = parallelize(
                reference, self.parallel, param_dtype=compute_dtype, weights_folder=folder, frozen=True
            ).eval()
        self.model.train()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [param for param in self.model.parameters() if param.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The reference model for the duration of the block (adapters disabled, or the frozen copy). Under FSDP
        every rank must run it together, as the policy."""
        if self.frozen_reference is not None:
            yield self.frozen_reference
            return
        if self.lora is None:
            raise ValueError("this policy was built without a reference (need_reference=False and no LoRA)")
        self.transformer.disable_adapters()
        try:
            yield self.transformer
        finally:
            self.transformer.enable_adapters()

    def trainable_state(self) -> dict[str, torch.Tensor] | None:
        """Every rank: what changes in training, whole and on the CPU of rank 0 (None on the others): the adapters
        with LoRA, every weight without. This is what is pushed to the rollout actors after each update."""
        return gather_trainable(self.model, self.parallel.rank)


def transformer_folder(checkpoint: str | pathlib.Path) -> pathlib.Path:
    folder = pathlib.Path(checkpoint) / "transformer"
    if not folder.is_dir():
        raise ValueError(f"checkpoint {checkpoint} has no transformer/ folder (expected a checkpoint's model/ folder)")
    return folder


def load_transformer(checkpoint: str | pathlib.Path, device: torch.device | str = "cpu") -> QwenImageTransformer2DModel:
    """The transformer of a checkpoint folder we wrote (its preset is read from ``model_index.json``)."""
    transformer_folder(checkpoint)
    return load_checkpoint(checkpoint, parts=("transformer",), device=device).transformer


def load_trainable_state(transformer: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from ``Policy.trainable_state``) into ``transformer``; every name must exist."""
    params = dict(transformer.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise ValueError(f"weights {unknown[:3]}... do not exist in this model (LoRA settings differ?)")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(torch.as_tensor(value).to(params[name].device, params[name].dtype))
