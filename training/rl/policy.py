"""The model RL trains: the transformer from a checkpoint, optional LoRA adapters, the frozen reference, saving.

With LoRA (peft, through diffusers' ``add_adapter``) only the adapters train and the reference is the same module
with adapters disabled: no second copy of the weights. Without LoRA the reference is a frozen copy of the start
checkpoint. Checkpoints hold the transformer in the diffusers layout with adapters merged, so every role opens
them as it opens a pretraining checkpoint; the adapter weights are also kept on their own for resuming.
"""

from __future__ import annotations

import contextlib
import copy
import pathlib
from collections.abc import Iterator

import torch
from diffusers import QwenImageTransformer2DModel

from models.checkpoint import load_checkpoint, read_metadata, save_components
from models.presets import Components
from training.rl.config import LoraSettings


class Policy:
    """The trained transformer and its reference."""

    def __init__(
        self,
        checkpoint: str | pathlib.Path,
        *,
        lora: LoraSettings | None,
        need_reference: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        self.preset = read_metadata(checkpoint).get("preset", "qwen-image")
        self.transformer = load_transformer(checkpoint, device)
        self.lora = lora
        self.frozen_reference = None
        if lora is not None:
            add_lora(self.transformer, lora, seed)
        elif need_reference:
            self.frozen_reference = copy.deepcopy(self.transformer).eval().requires_grad_(False)
        if lora is None:
            self.transformer.requires_grad_(True)
        self.transformer.train()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [param for param in self.transformer.parameters() if param.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[QwenImageTransformer2DModel]:
        """The reference model for the duration of the block (adapters disabled, or the frozen copy)."""
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

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What changes in training, on the CPU: the adapters with LoRA, every weight without. This is what is
        pushed to the rollout actors after each update."""
        return {
            name: param.detach().cpu().clone()
            for name, param in self.transformer.named_parameters()
            if param.requires_grad
        }

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        load_trainable_state(self.transformer, state)

    def save(self, folder: str | pathlib.Path, metadata: dict | None = None) -> pathlib.Path:
        """The transformer (adapters merged) as a diffusers-layout checkpoint folder."""
        transformer = self.transformer
        if self.lora is not None:
            with torch.device("meta"):
                transformer = QwenImageTransformer2DModel.from_config(self.transformer.config)
            transformer.load_state_dict(merged_state_dict(self.transformer), assign=True)
        return save_components(folder, Components(preset=self.preset, transformer=transformer), metadata=metadata)


def load_transformer(checkpoint: str | pathlib.Path, device: torch.device | str = "cpu") -> QwenImageTransformer2DModel:
    """The transformer of a checkpoint folder we wrote (its preset is read from ``model_index.json``)."""
    if not (pathlib.Path(checkpoint) / "transformer").is_dir():
        raise ValueError(f"checkpoint {checkpoint} has no transformer/ folder (expected a checkpoint's model/ folder)")
    return load_checkpoint(checkpoint, parts=("transformer",), device=device).transformer


def add_lora(transformer: QwenImageTransformer2DModel, settings: LoraSettings, seed: int = 0) -> None:
    """Freeze the base weights and add trainable LoRA adapters (B starts at zero: the model is unchanged)."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    torch.manual_seed(seed)
    transformer.add_adapter(
        LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=list(settings.target_modules),
            init_lora_weights="gaussian",
        )
    )


def load_trainable_state(transformer: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from ``Policy.trainable_state``) into ``transformer``; every name must exist."""
    params = dict(transformer.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise ValueError(f"weights {unknown[:3]}... do not exist in this model (LoRA settings differ?)")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(torch.as_tensor(value).to(params[name].device, params[name].dtype))


def merged_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain transformer's state dict with every active LoRA delta added to its base weight."""
    from peft.tuners.lora import LoraLayer

    state = {
        key.replace(".base_layer.", "."): value.detach().clone()
        for key, value in transformer.state_dict().items()
        if "lora_" not in key
    }
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if isinstance(module, LoraLayer) and not module.disable_adapters:
                for adapter in module.active_adapters:
                    state[f"{name}.weight"] += module.get_delta_weight(adapter).to(state[f"{name}.weight"].dtype)
    return state
