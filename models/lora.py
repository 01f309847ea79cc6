"""LoRA adapters on the transformer (peft), saved and loaded in the diffusers format.

Every transformer training job can train adapters instead of the weights (``lora:`` in its config, a
``LoraSettings``): the base is frozen and only the adapters train. An adapter is saved alone as
``pytorch_lora_weights.safetensors`` with diffusers' key names and its peft config in the file's metadata, the file
``QwenImagePipeline.save_lora_weights`` writes, so ``QwenImagePipeline.load_lora_weights`` and the other tools that
read diffusers LoRAs load it. ``read_adapter`` reads such files, ours and third-party ones (diffusers converts the
kohya / ComfyUI / musubi-tuner key layouts it knows), and ``load_adapter`` adds one to a transformer under a name.
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Literal

import pydantic
import torch

from models.config import StrictModel

ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
DEFAULT_ADAPTER = "default"  # peft's name of the adapter a model trains
PREFIX = "transformer."  # diffusers' key prefix of the transformer's adapters in a pipeline's LoRA file


class LoraSettings(StrictModel):
    """LoRA adapters (peft) on the transformer's linear layers; the base weights stay frozen."""

    rank: int = pydantic.Field(default=16, ge=1)
    alpha: float = pydantic.Field(default=16.0, gt=0)
    dropout: float = pydantic.Field(default=0.0, ge=0, lt=1)
    # The attention projections, as diffusers' train_dreambooth_lora_qwen_image.py targets by default. Others of
    # each block: add_q_proj, add_k_proj, add_v_proj, to_add_out (text stream), img_mlp.net.0.proj, img_mlp.net.2,
    # txt_mlp.net.0.proj, txt_mlp.net.2 (feed-forward), img_mod.1, txt_mod.1 (modulation).
    target_modules: list[str] = ["to_k", "to_q", "to_v", "to_out.0"]
    # Per-block ranks: {block index: rank} for the blocks that differ from ``rank`` (e.g. {0: 32, 59: 4}).
    block_ranks: dict[int, pydantic.PositiveInt] = {}
    # peft's own patterns (regular expressions over module names -> rank / alpha), for finer control.
    rank_pattern: dict[str, pydantic.PositiveInt] = {}
    alpha_pattern: dict[str, pydantic.PositiveFloat] = {}
    # Weight-only quantisation of the frozen base's block linear layers (torchao): int8 (per-row scales) or float8
    # (e4m3), half the bf16 base's memory; the adapters stay in full precision. One worker per model (DDP with one
    # worker, not FSDP). float8 needs a CPU, or a GPU of compute capability 8.9 or later (Ada, Hopper).
    quantize: Literal["none", "int8", "float8"] = "none"
    # Pretraining, SFT and fine-tuning export the adapter file alone; merge: also the merged pipeline folder (the
    # whole model's size: 41 GB in bf16 for the published one). DPO and GRPO always export the merged pipeline.
    merge: bool = False

    def peft_config(self):
        """The ``peft.LoraConfig`` of these settings (gaussian A, zero B: the adapted model starts as the base)."""
        from peft import LoraConfig

        blocks = {rf"transformer_blocks\.{index}\..*": rank for index, rank in sorted(self.block_ranks.items())}
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            rank_pattern={**blocks, **self.rank_pattern},
            alpha_pattern=dict(self.alpha_pattern),
            init_lora_weights="gaussian",
        )


def add_lora(transformer: torch.nn.Module, settings: LoraSettings, adapter_name: str = DEFAULT_ADAPTER) -> None:
    """Freeze the base weights and add trainable LoRA adapters, on whatever device the model is (meta included);
    ``init_lora_`` draws their weights. A target that matches no layer is an error naming it."""
    names = [name for name, _ in transformer.named_modules()]
    for target in settings.target_modules:
        if not any(name == target or name.endswith(f".{target}") for name in names):
            raise ValueError(f"lora.target_modules: {target!r} names no layer of the transformer")
    blocks = len(getattr(transformer, "transformer_blocks", []))
    outside = sorted(index for index in settings.block_ranks if not 0 <= index < blocks)
    if outside:
        raise ValueError(f"lora.block_ranks: blocks {outside} do not exist (the transformer has {blocks})")
    transformer.requires_grad_(False)
    transformer.add_adapter(settings.peft_config(), adapter_name=adapter_name)


def init_lora_(transformer: torch.nn.Module, seed: int) -> None:
    """peft's gaussian initialisation, drawn whole from ``seed`` in module order (the same on every rank and for
    any number of workers): A ~ N(0, 1/r^2), B = 0, so the adapted model starts as the base."""
    from peft.tuners.lora import LoraLayer

    from training.parallel import fill_from_full_

    generator = torch.Generator().manual_seed(seed)
    for module in transformer.modules():
        if isinstance(module, LoraLayer):
            for adapter, down in module.lora_A.items():
                weight = down.weight
                fill_from_full_(weight, torch.randn(weight.shape, generator=generator) / module.r[adapter])
                fill_from_full_(module.lora_B[adapter].weight, torch.zeros(module.lora_B[adapter].weight.shape))


def adapter_state(
    transformer: torch.nn.Module, state: dict[str, torch.Tensor] | None = None, adapter_name: str = DEFAULT_ADAPTER
) -> dict[str, torch.Tensor]:
    """The adapter's tensors under diffusers' names (``transformer_blocks.0.attn.to_q.lora_A.weight``: peft's
    names without the adapter's), from the transformer or from ``state``, its gathered trainable tensors."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer, state_dict=state, adapter_name=adapter_name)


def adapter_metadata(transformer: torch.nn.Module, adapter_name: str = DEFAULT_ADAPTER) -> dict:
    """The adapter's peft config as diffusers stores it in the file (so loaders rebuild ranks, alphas, patterns)."""
    return transformer.peft_config[adapter_name].to_dict()


def save_adapter(folder: str | pathlib.Path, tensors: dict[str, torch.Tensor], metadata: dict) -> pathlib.Path:
    """``folder/pytorch_lora_weights.safetensors`` as ``QwenImagePipeline.save_lora_weights`` writes it (keys
    prefixed ``transformer.``, the peft config in the metadata); returns the file."""
    from diffusers import QwenImagePipeline

    folder = pathlib.Path(folder)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    QwenImagePipeline.save_lora_weights(
        folder, transformer_lora_layers=tensors, transformer_lora_adapter_metadata=metadata, weight_name=ADAPTER_FILE
    )
    return folder / ADAPTER_FILE


def adapter_file(path: str | pathlib.Path) -> pathlib.Path:
    """The adapter file of ``path``: the file itself, or ``pytorch_lora_weights.safetensors`` in a folder."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    if not path.is_file():
        raise ValueError(
            f"LoRA adapter {path} does not exist (a .safetensors file, or a folder holding {ADAPTER_FILE})"
        )
    return path


def read_adapter(path: str | pathlib.Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """An adapter file's tensors under diffusers' names (third-party layouts converted) and its metadata."""
    from diffusers import QwenImagePipeline

    path = adapter_file(path)
    try:
        state, metadata = QwenImagePipeline.lora_state_dict(str(path), return_lora_metadata=True)
    except Exception as error:  # a file that is not safetensors, or keys diffusers cannot convert
        raise ValueError(f"cannot read LoRA adapter {path}: {type(error).__name__}: {error}") from None
    if not state or not all("lora" in key for key in state):
        raise ValueError(f"{path} is not a LoRA adapter of this transformer (keys such as {sorted(state)[:2]})")
    return state, metadata


def load_adapter(transformer: torch.nn.Module, path: str | pathlib.Path, adapter_name: str) -> None:
    """Add the adapter file at ``path`` to ``transformer`` as ``adapter_name`` (the base weights are not touched;
    ``transformer.delete_adapters(name)`` takes it out again). Keys that match no layer are an error."""
    state, metadata = read_adapter(path)
    if not any(key.startswith(PREFIX) for key in state):  # a bare peft state dict: its keys are the layers'
        state = {PREFIX + key: value for key, value in state.items()}
    layers = {name for name, _ in transformer.named_modules()}
    unknown = sorted({key.removeprefix(PREFIX).split(".lora_")[0] for key in state} - layers)
    if unknown:
        raise ValueError(f"LoRA adapter {path} adapts layers this transformer does not have: {unknown[:3]}")
    with warnings.catch_warnings():  # several adapters in one model is what serving by name does
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        transformer.load_lora_adapter(state, adapter_name=adapter_name, metadata=metadata, prefix=PREFIX.rstrip("."))


def check_quantize(kind: str, device: torch.device) -> None:
    """Whether ``kind`` weight-only quantisation can run on ``device``; an error that says why not."""
    if kind == "none":
        return
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ValueError(f"lora.quantize={kind} needs torchao (pip install torchao)") from None
    if kind == "float8" and device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 9):
            raise ValueError(
                f"lora.quantize=float8 needs a GPU of compute capability 8.9 or later (Ada, Hopper); "
                f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}: use int8"
            )


def quantize_base_(transformer: torch.nn.Module, kind: str) -> int:
    """Replace the weights of the frozen linear layers inside the transformer's blocks (each LoRA layer's base, and
    the layers LoRA does not adapt) with torchao's weight-only quantised tensors, in place; returns how many layers.
    Layers outside the blocks (embeddings, the output projection) are small and stay as they are."""
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = {"int8": Int8WeightOnlyConfig, "float8": Float8WeightOnlyConfig}[kind]()
    blocks = transformer.transformer_blocks
    chosen = {
        id(module) for module in blocks.modules() if type(module) is torch.nn.Linear and not module.weight.requires_grad
    }
    with warnings.catch_warnings():  # torchao's deprecation notices about torch.compile registrations are noise here
        warnings.simplefilter("ignore")
        quantize_(blocks, config, filter_fn=lambda module, _name: id(module) in chosen)
    return len(chosen)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds, a quantised tensor subclass (its data and scales) included."""
    if not hasattr(tensor, "__tensor_flatten__"):
        return tensor.numel() * tensor.element_size()
    names, _ = tensor.__tensor_flatten__()
    return sum(tensor_bytes(getattr(tensor, name)) for name in names)
