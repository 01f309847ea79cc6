"""Fine-tuning the VAE's image decoder on text-rich images (docs/qwen_image.md §6), on Ray Train.

Qwen-Image keeps the Wan-2.1 encoder frozen and fine-tunes only the image decoder on text-rich images with a
reconstruction and a perceptual loss, no adversarial term. Freezing the encoder keeps the latent space (and its
normalisation statistics) exactly as it was, so latent stores and a transformer trained on them stay valid; only
what the latents are decoded into gets sharper. The trained parts are ``post_quant_conv`` and ``decoder``.

Loss: ``l1_weight * L1 + perceptual.weight * perceptual`` on images in [-1, 1]. The perceptual term is
``perceptual.kind``:

- ``vgg``: L1 between VGG-16 features (relu1_2, relu2_2, relu3_3) of the reconstruction and the original; needs
  ``perceptual.weights_path``, a local torchvision ``vgg16`` state dict (``.safetensors`` or ``.pth``), since
  nothing is downloaded;
- ``ssim`` (the default, because no perceptual network's weights ship with this repository): ``1 - SSIM`` with the
  evaluation's window (``models.image_metrics``); it rewards local structure (stroke edges) the way a perceptual
  term does, without learned features.

Because the encoder is frozen and deterministic (posterior mode), every training image is encoded once up front.
Checkpoints hold the trained modules and the optimiser (DCP, ``training.checkpointer``); the run ends with an
export of the whole VAE in the diffusers layout (``<run>/exports/step<N>-vae-decoder``: ``vae/``,
``model_index.json``), which ``TextToImage.from_checkpoint`` and the evaluation job open.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Callable
from typing import Literal

import numpy as np
import pydantic
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLQwenImage

from models.checkpoint import check_model_folder, follow_run, read_metadata, save_components
from models.config import StrictModel
from models.image_metrics import psnr, ssim, uint8_to_unit
from models.imageio import save_png, to_grid
from models.presets import Components, build_components
from models.vae import decode_unclamped, images_to_tensor, tensor_to_images
from training.checkpointer import load_checkpoint, report_checkpoint
from training.evaluation.images import text_rich_images
from training.progress import Progress
from training.trainer import RunSettings, fit_trainer

logger = logging.getLogger(__name__)
TRAINED_MODULES: tuple[str, ...] = ("post_quant_conv", "decoder")
HELDOUT_START = 1_000_000  # synthesiser rows of the held-out images: never among the training rows
# torchvision's ImageNet normalisation, which VGG-16's weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualConfig(StrictModel):
    kind: Literal["ssim", "vgg"] = "ssim"
    weights_path: str | None = None  # kind "vgg": a local torchvision vgg16 state dict
    weight: float = pydantic.Field(default=1.0, ge=0)

    @pydantic.model_validator(mode="after")
    def _vgg_needs_weights(self) -> PerceptualConfig:
        if self.kind == "vgg" and not (self.weights_path and pathlib.Path(self.weights_path).is_file()):
            raise ValueError(
                f"perceptual.kind 'vgg' needs perceptual.weights_path, a local vgg16 state dict file; got "
                f"{self.weights_path!r} (nothing is downloaded; use kind 'ssim' without one)"
            )
        return self


class VaeFinetuneConfig(RunSettings):
    """One decoder fine-tuning run."""

    preset: str = "tiny"
    # The start: a diffusers pipeline folder as Qwen/Qwen-Image is published, or a checkpoint we wrote (an earlier
    # fine-tuning's included), checked part by part; its vae/ is fine-tuned. Sets weights_dir and preset.
    init: str | None = None
    weights_dir: str | None = None  # a diffusers folder with vae/ (qwen-image, or an earlier fine-tuning checkpoint)
    output_dir: str = "outputs/finetune_vae"
    run_name: str = "vae-decoder"
    resolution: int = pydantic.Field(default=256, ge=64)
    languages: list[Literal["en", "zh"]] = ["en", "zh"]  # training and held-out images alternate between these
    num_train_images: int = pydantic.Field(default=256, ge=1)
    num_heldout_images: int = pydantic.Field(default=16, ge=1)
    batch_size: int = pydantic.Field(default=4, ge=1)
    num_steps: int = pydantic.Field(default=500, ge=1)
    lr: float = pydantic.Field(default=1e-4, gt=0)
    l1_weight: float = pydantic.Field(default=1.0, ge=0)
    perceptual: PerceptualConfig = PerceptualConfig()
    # Run settings (workers, checkpoints, logging: training.trainer.RunSettings); a failed group restarts once.
    max_failures: int = pydantic.Field(default=1, ge=0)

    @pydantic.model_validator(mode="after")
    def _init(self) -> VaeFinetuneConfig:
        if self.init is None:
            return self
        init = follow_run(self.init)
        preset, parts = check_model_folder(init)
        if "vae" not in parts:
            raise ValueError(f"init {init} holds no vae/ to fine-tune")
        if self.weights_dir is not None and pathlib.Path(self.weights_dir).resolve() != pathlib.Path(init):
            raise ValueError("give the start folder once: init or weights_dir")
        # Each assignment validates the model again; a field already equal is left alone, so that ends.
        if self.init != init:
            self.init = init
        if self.weights_dir != init:
            self.weights_dir = init
        if self.preset != preset:
            self.preset = preset
        return self

    @pydantic.model_validator(mode="after")
    def _data_parallel(self) -> VaeFinetuneConfig:
        if self.parallel.strategy != "ddp":
            raise ValueError("VAE fine-tuning trains with parallel.strategy=ddp (the decoder fits on every worker)")
        return self


# Build.
def build_vae(config: VaeFinetuneConfig) -> AutoencoderKLQwenImage:
    """The VAE to fine-tune, encoder and ``quant_conv`` frozen, ``post_quant_conv`` and decoder trainable."""
    vae = build_components(config.preset, weights_dir=config.weights_dir, parts=("vae",), seed=config.seed).vae
    vae.requires_grad_(False).eval()
    for name in TRAINED_MODULES:
        getattr(vae, name).requires_grad_(True).train()
    return vae


def trained_parameters(vae: AutoencoderKLQwenImage) -> list[torch.nn.Parameter]:
    return [param for name in TRAINED_MODULES for param in getattr(vae, name).parameters()]


def encoder_state(vae: AutoencoderKLQwenImage) -> dict[str, torch.Tensor]:
    """Copies of every frozen tensor (encoder and ``quant_conv``): what a run must leave unchanged."""
    return {
        name: tensor.detach().clone()
        for name, tensor in vae.state_dict().items()
        if not name.startswith(tuple(f"{module}." for module in TRAINED_MODULES))
    }


@torch.no_grad()
def encode(vae: AutoencoderKLQwenImage, images: np.ndarray, batch_size: int = 8) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> raw posterior-mode latents ``[N, 16, 1, H/8, W/8]`` (the frozen encoder, once)."""
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = images_to_tensor(images[start : start + batch_size]).to(vae.device, vae.dtype)
        chunks.append(vae.encode(pixels.unsqueeze(2)).latent_dist.mode())
    return torch.cat(chunks)


def decode(vae: AutoencoderKLQwenImage, latents: torch.Tensor) -> torch.Tensor:
    """Raw latents ``[B, 16, 1, h, w]`` -> images ``[B, 3, 8h, 8w]``, unclamped so that gradients reach every pixel
    (diffusers' ``decode`` clamps to [-1, 1]: through it a saturated pixel gets no gradient at all)."""
    return decode_unclamped(vae, latents[:, :, 0])


# Loss.
class PerceptualLoss(torch.nn.Module):
    """The perceptual term of ``PerceptualConfig`` on images in [-1, 1] (see the module docstring)."""

    def __init__(self, config: PerceptualConfig):
        super().__init__()
        self.kind = config.kind
        self.features = _vgg_features(config.weights_path) if config.kind == "vgg" else None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        first, second = (reconstruction + 1) / 2, (target + 1) / 2
        if self.features is None:
            return (1 - ssim(first, second)).mean()
        first, second = (first - self.mean) / self.std, (second - self.mean) / self.std
        loss = reconstruction.new_zeros(())
        for index, layer in enumerate(self.features):
            first, second = layer(first), layer(second)
            if index in VGG_TAPS:
                loss = loss + F.l1_loss(first, second)
        return loss


VGG_TAPS = (3, 8, 15)  # relu1_2, relu2_2, relu3_3 in torchvision's vgg16().features


def _vgg_features(weights_path: str) -> torch.nn.Sequential:
    from torchvision.models import vgg16

    model = vgg16(weights=None)
    if weights_path.endswith(".safetensors"):
        from safetensors.torch import load_file

        weights = load_file(weights_path)
    else:
        weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(weights)
    return model.features[: VGG_TAPS[-1] + 1].eval().requires_grad_(False)


def reconstruction_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, config: VaeFinetuneConfig, perceptual: PerceptualLoss
) -> tuple[torch.Tensor, dict[str, float]]:
    """``l1_weight * L1 + perceptual.weight * perceptual`` and both parts as floats."""
    l1 = F.l1_loss(reconstruction, target)
    term = perceptual(reconstruction, target) if config.perceptual.weight > 0 else reconstruction.new_zeros(())
    loss = config.l1_weight * l1 + config.perceptual.weight * term
    return loss, {"l1": float(l1.detach()), "perceptual": float(term.detach())}


# Train.
def train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    latents: torch.Tensor,
    targets: torch.Tensor,
    config: VaeFinetuneConfig,
    *,
    start: int,
    end: int,
    on_step: Callable[[int, dict], None] | None = None,
) -> int:
    """Optimiser steps ``start + 1 .. end`` over ``(latents, targets)`` ([N, 16, 1, h, w], [N, 3, H, W] in [-1, 1]).

    ``model`` maps latents to images (a ``DecoderOnly``, DDP-wrapped or not). Batches follow a permutation drawn
    from ``(seed, epoch)``, so a resumed run sees the same batches. ``on_step(step, metrics)`` after every step."""
    perceptual = PerceptualLoss(config.perceptual).to(targets.device)
    batch_size = min(config.batch_size, len(latents))
    batches_per_epoch = len(latents) // batch_size
    for step in range(start, end):
        epoch, position = divmod(step, batches_per_epoch)
        order = torch.randperm(len(latents), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch))
        index = order[position * batch_size : (position + 1) * batch_size].to(latents.device)
        loss, parts = reconstruction_loss(model(latents[index]), targets[index], config, perceptual)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1, {"loss": float(loss.detach()), **parts})
    return end


class DecoderOnly(torch.nn.Module):
    """Latents -> images through the VAE's decoder: the module Ray Train wraps in DDP."""

    def __init__(self, vae: AutoencoderKLQwenImage):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return decode(self.vae, latents)


# Evaluate.
@torch.no_grad()
def reconstruct(vae: AutoencoderKLQwenImage, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> its uint8 reconstruction through the VAE (posterior mode)."""
    modes = {module: module.training for module in vae.modules()}  # a run in progress keeps its decoder's mode
    vae.eval()
    latents = encode(vae, images, batch_size)
    out = [tensor_to_images(decode(vae, latents[s : s + batch_size])) for s in range(0, len(latents), batch_size)]
    for module, training in modes.items():
        module.training = training
    return np.concatenate(out)


def reconstruction_scores(originals: np.ndarray, reconstructions: np.ndarray) -> dict[str, float]:
    """Mean PSNR and SSIM (docs/qwen_image.md §9 conventions, ``models.image_metrics``) of uint8 image pairs."""
    first, second = uint8_to_unit(originals), uint8_to_unit(reconstructions)
    return {"psnr": float(psnr(first, second).mean()), "ssim": float(ssim(first, second).mean())}


def train_images(config: VaeFinetuneConfig, *, heldout: bool = False) -> np.ndarray:
    """The run's text-rich training (or held-out) images, split evenly over ``languages``."""
    count = config.num_heldout_images if heldout else config.num_train_images
    start = HELDOUT_START if heldout else 0
    parts = []
    for index, language in enumerate(config.languages):
        share = count // len(config.languages) + (index < count % len(config.languages))
        if share:
            parts.append(text_rich_images(share, config.resolution, language, seed=config.seed, start=start)[0])
    return np.concatenate(parts)


# Ray Train.
def train_loop_per_worker(loop_config: dict) -> None:
    config = VaeFinetuneConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed)
    vae = build_vae(config).to(device)
    optimizer = torch.optim.AdamW(trained_parameters(vae), lr=config.lr, weight_decay=0.0)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            info, _ = load_checkpoint(folder, model=vae, optimizer=optimizer, rank=rank, trainable_only=True)
            step = int(info["step"])
    images = train_images(config)[rank::world]  # each rank trains on its own share
    latents = encode(vae, images).to(device)
    targets = images_to_tensor(images).to(device)
    model = ray.train.torch.prepare_model(DecoderOnly(vae))  # DDP when world > 1
    writer = _metrics_writer(config) if rank == 0 else None
    total: dict[str, float] = {"steps": 0}

    def on_step(done: int, metrics: dict) -> None:
        total["steps"] += 1
        for key, value in metrics.items():
            total[key] = total.get(key, 0.0) + value
        if done % config.log_every and done % config.checkpoint_every and done != config.num_steps:
            return
        count = total.pop("steps")
        row = {"step": done, "phase": "vae-decoder", "resolution": config.resolution, "lr": config.lr}
        row.update({key: value / count for key, value in total.items()})
        total.clear()
        total["steps"] = 0
        if writer is not None:
            writer.write(row)
            print(f"[finetune_vae] step {done}/{config.num_steps} loss {row['loss']:.4f}", flush=True)
        # Metrics reach Ray Train with checkpoints only: every report is a barrier across the workers and waits for
        # the controller (about 2 s a step here); the CSV and TensorBoard get every logged step.
        if done % config.checkpoint_every == 0 or done == config.num_steps:
            if done == config.num_steps and rank == 0:
                save_vae_export(export_folder(config), vae, done, config)
            _report_checkpoint(vae, optimizer, done, config, row, rank, world)

    train_steps(model, optimizer, latents, targets, config, start=step, end=config.num_steps, on_step=on_step)
    if writer is not None:
        writer.close()


def _metrics_writer(config: VaeFinetuneConfig):
    from training.metrics import MetricsWriter

    return MetricsWriter(pathlib.Path(config.output_dir) / config.run_name)


def export_folder(config: VaeFinetuneConfig) -> pathlib.Path:
    return pathlib.Path(config.output_dir) / config.run_name / "exports" / f"step{config.num_steps:07d}-vae-decoder"


def save_vae_export(folder: pathlib.Path, vae: AutoencoderKLQwenImage, step: int, config: VaeFinetuneConfig):
    """The fine-tuned VAE in the diffusers layout (``vae/``, ``model_index.json``) with the run in its metadata."""
    metadata = {"step": step, "run": config.run_name, "finetuned": "vae_decoder"}
    return save_components(folder, Components(preset=config.preset, vae=vae), metadata=metadata)


def _report_checkpoint(vae, optimizer, step: int, config: VaeFinetuneConfig, metrics: dict, rank: int, world: int):
    """Every rank: the trained modules and the optimiser (DCP), with the step; the frozen encoder is not saved."""
    info = {"step": step, "run": config.run_name}
    report_checkpoint(metrics, model=vae, optimizer=optimizer, rank=rank, world=world, info=info, trainable_only=True)


def run_finetune(config: VaeFinetuneConfig) -> dict:
    """Fine-tune on Ray Train, then score the held-out text images before and after; returns where things are."""
    update = {"output_dir": str(pathlib.Path(config.output_dir).resolve())}
    if config.weights_dir:
        update["weights_dir"] = str(pathlib.Path(config.weights_dir).resolve())
        update["preset"] = read_metadata(config.weights_dir).get("preset", config.preset)
    config = config.model_copy(update=update)
    folder = pathlib.Path(config.output_dir) / config.run_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config.model_dump_json(indent=2))
    heldout = train_images(config, heldout=True)
    before = reconstruct(build_vae(config), heldout)
    print(f"[finetune_vae] {config.num_steps} steps on {config.num_train_images} text-rich images", flush=True)
    progress = Progress(folder / "metrics.csv", config.num_steps, "finetune_vae", ("loss", "l1", "perceptual"))
    fit_trainer(train_loop_per_worker, config, name=config.run_name, storage_path=folder / "ray", progress=progress)
    final = export_folder(config)
    after = reconstruct(build_components(config.preset, weights_dir=final, parts=("vae",)).vae, heldout)
    scores = {"before": reconstruction_scores(heldout, before), "after": reconstruction_scores(heldout, after)}
    shown = min(8, len(heldout))
    grid = np.concatenate([heldout[:shown], before[:shown], after[:shown]])
    labels = ["original"] * shown + ["before"] * shown + ["after"] * shown
    summary = {
        "checkpoint": str(final),
        "heldout": scores,
        "grid": str(save_png(to_grid(grid, columns=shown, labels=labels), folder / "heldout_reconstructions.png")),
        "metrics": str(folder / "metrics.csv"),
        "loss_curve": str(_loss_curve(folder)),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _loss_curve(folder: pathlib.Path) -> pathlib.Path:
    from training.metrics import plot_loss_curve

    return plot_loss_curve(folder / "metrics.csv", folder / "loss_curve.png")
