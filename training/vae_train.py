"""Training a VAE from scratch (encoder and decoder) on Ray Train: how the ``nano`` preset's VAE is made.

The architecture is the published one (``AutoencoderKLQwenImage``: Wan-2.1, 8x spatial compression, 16 latent
channels) at a small width (``architecture``); the data are the compositional shape scenes of
``pipelines.synth.shapes`` (objects and words), drawn on every worker from the run's seed, so a run needs no files.

Loss on images in [-1, 1]: ``l1_weight * L1 + l2_weight * MSE + perceptual.weight * (1 - SSIM) + kl_weight * KL +
latent_prior_weight * prior``, KL being the posterior's KL to the standard normal averaged over latent elements and
prior the mean squared distance of the first 12 latent channels to the image average-pooled 4x4 and folded 2x2 into
channels (``latent_prior``). Three choices make this architecture learn at all on a small machine (measured while
building the recipe, see ``docs/nano.md``):

- the decoder output is used **unclamped** (diffusers' ``decode`` clamps to [-1, 1], which stops the gradient of
  every pixel past the bound; the flat colours of these scenes sit near the bounds);
- the posterior's log-variance starts at ``initial_logvar`` (the bias of the ``quant_conv`` rows that produce it):
  at diffusers' initialisation its noise has standard deviation 1 and drowns the encoder's small initial means;
- the latent prior: without it the encoder and decoder wait on each other and the reconstruction stays at each
  scene's background for thousands of steps; the prior gives the decoder informative latents from the start (and
  leaves latents that look like a small image, which the diffusion model learns easily).

The learning rate warms up over ``warmup_steps`` and follows a cosine down to ``final_lr_fraction`` of it. At the end
the latent normalisation (per-channel mean and standard deviation of the posterior means over the held-out scenes)
is written into the VAE's config, as the published VAE carries its own, and the VAE is exported in the diffusers
layout (``<run>/exports/step<N>-vae``). ``ship`` writes it as the repository's shipped weights
(``models/weights/nano_vae``, float16).
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pydantic
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLQwenImage

from models.checkpoint import save_components
from models.config import StrictModel
from models.imageio import save_png, to_grid
from models.presets import NANO_VAE_CONFIG, Components
from models.vae import decode_unclamped, encode_posterior, images_to_tensor, tensor_to_images
from pipelines.synth import shapes
from training.checkpointer import load_checkpoint, report_checkpoint
from training.metrics import MetricsWriter
from training.progress import Progress
from training.trainer import RunSettings, fit_trainer
from training.vae_finetune import PerceptualConfig, PerceptualLoss, reconstruction_scores

HELDOUT_START = 1_000_000  # scene indices of the held-out images: never among the training scenes


class SceneData(StrictModel):
    resolution: int = pydantic.Field(default=64, ge=32, multiple_of=32)
    kinds: list[str] = ["one", "two", "word"]
    num_train_images: int = pydantic.Field(default=8192, ge=1)
    num_heldout_images: int = pydantic.Field(default=128, ge=1)

    @pydantic.field_validator("kinds")
    @classmethod
    def _known(cls, kinds: list[str]) -> list[str]:
        unknown = sorted(set(kinds) - set(shapes.KINDS))
        if unknown or not kinds:
            raise ValueError(f"unknown scene kinds {unknown}: use some of {shapes.KINDS}")
        return kinds


class VaeTrainConfig(RunSettings):
    """One from-scratch VAE training run."""

    output_dir: str = "outputs/train_vae"
    run_name: str = "nano-vae"
    preset: str = "nano"  # written into the export's model_index.json
    architecture: dict = NANO_VAE_CONFIG  # AutoencoderKLQwenImage keyword arguments
    data: SceneData = SceneData()
    batch_size: int = pydantic.Field(default=8, ge=1)
    num_steps: int = pydantic.Field(default=6000, ge=1)
    lr: float = pydantic.Field(default=4e-4, gt=0)
    warmup_steps: int = pydantic.Field(default=200, ge=0)
    final_lr_fraction: float = pydantic.Field(default=0.05, ge=0, le=1)
    grad_clip: float = pydantic.Field(default=1.0, gt=0)
    l1_weight: float = pydantic.Field(default=1.0, ge=0)
    l2_weight: float = pydantic.Field(default=1.0, ge=0)
    perceptual: PerceptualConfig = PerceptualConfig(weight=0.2)
    kl_weight: float = pydantic.Field(default=1e-4, ge=0)
    # The latent prior: the first 12 latent channels pulled towards the image average-pooled 4x4 and folded 2x2 into
    # channels (space to depth), times ``latent_prior_scale``. Without it this architecture sits for thousands of
    # steps at the background colour (docs/nano.md); with it the latents carry the image's layout from the start.
    latent_prior_weight: float = pydantic.Field(default=1.0, ge=0)
    latent_prior_scale: float = pydantic.Field(default=3.0, gt=0)
    initial_logvar: float = -6.0
    eval_every: int = pydantic.Field(default=250, ge=1)  # steps between held-out PSNR rows (rank 0)
    checkpoint_every: int = 500
    max_failures: int = pydantic.Field(default=1, ge=0)

    @pydantic.model_validator(mode="after")
    def _data_parallel(self) -> VaeTrainConfig:
        if self.parallel.strategy != "ddp":
            raise ValueError("VAE training uses parallel.strategy=ddp (the VAE fits on every worker)")
        return self


# Data.
def scene_images(data: SceneData, seed: int, *, heldout: bool = False, rows: slice | None = None) -> np.ndarray:
    """uint8 ``[N, R, R, 3]``: the training scenes (or the held-out ones), ``rows`` of them."""
    count = data.num_heldout_images if heldout else data.num_train_images
    indices = range(HELDOUT_START, HELDOUT_START + count) if heldout else range(count)
    indices = indices[rows] if rows is not None else indices
    images = []
    for index in indices:
        rng = np.random.default_rng([seed, index])
        scene = shapes.sample_scene(rng, kinds=tuple(data.kinds), split="any")
        images.append(shapes.render_scene(scene, data.resolution, rng))
    return np.stack(images)


# Model.
def build_vae(config: VaeTrainConfig) -> AutoencoderKLQwenImage:
    torch.manual_seed(config.seed)
    vae = AutoencoderKLQwenImage(**config.architecture)
    z_dim = vae.config.z_dim
    with torch.no_grad():  # quant_conv's second half of output channels is the posterior's log-variance
        vae.quant_conv.bias[z_dim:].fill_(config.initial_logvar)
    return vae


def latent_prior(images: torch.Tensor, scale: float) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, 12, H/8, W/8]``: the image average-pooled 4x4, each 2x2 block folded into channels."""
    return F.pixel_unshuffle(F.avg_pool2d(images, 4), 2) * scale


class Autoencoder(torch.nn.Module):
    """Images -> (unclamped reconstruction, mean KL per latent element, posterior means): the module Ray Train wraps
    in DDP."""

    def __init__(self, vae: AutoencoderKLQwenImage):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        posterior = encode_posterior(self.vae, images, frame_convs="2d")
        latents = posterior.sample(generator)
        kl = posterior.kl().mean() / math.prod(posterior.mean.shape[1:])
        return decode_unclamped(self.vae, latents, frame_convs="2d"), kl, posterior.mean


def learning_rate(config: VaeTrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine to ``final_lr_fraction * lr`` at ``num_steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.num_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.final_lr_fraction
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def loss_terms(
    reconstruction: torch.Tensor,
    kl: torch.Tensor,
    means: torch.Tensor,
    target: torch.Tensor,
    config: VaeTrainConfig,
    perceptual,
) -> tuple[torch.Tensor, dict[str, float]]:
    l1 = F.l1_loss(reconstruction, target)
    l2 = F.mse_loss(reconstruction, target)
    term = perceptual(reconstruction, target) if config.perceptual.weight > 0 else reconstruction.new_zeros(())
    prior = F.mse_loss(means[:, :12], latent_prior(target, config.latent_prior_scale))
    loss = config.l1_weight * l1 + config.l2_weight * l2 + config.perceptual.weight * term + config.kl_weight * kl
    loss = loss + config.latent_prior_weight * prior
    parts = {"l1": l1, "l2": l2, "perceptual": term, "kl": kl, "latent_prior": prior}
    return loss, {key: float(value.detach()) for key, value in parts.items()}


# Evaluate.
@torch.no_grad()
def reconstruct(vae: AutoencoderKLQwenImage, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> its uint8 reconstruction (posterior mode, diffusers' clamped decode)."""
    training = vae.training
    vae.eval()
    out = []
    for start in range(0, len(images), batch_size):
        pixels = images_to_tensor(images[start : start + batch_size]).to(vae.device, vae.dtype)
        latents = encode_posterior(vae, pixels, frame_convs="2d").mode()
        out.append(tensor_to_images(decode_unclamped(vae, latents, frame_convs="2d").clamp(-1, 1)))
    vae.train(training)
    return np.concatenate(out)


@torch.no_grad()
def latent_statistics(vae: AutoencoderKLQwenImage, images: np.ndarray, batch_size: int = 64) -> tuple[list, list]:
    """Per-channel mean and standard deviation of the posterior means of ``images`` (the run uses its held-out
    scenes: the same distribution as its training scenes)."""
    training = vae.training
    vae.eval()
    modes = []
    for start in range(0, len(images), batch_size):
        pixels = images_to_tensor(images[start : start + batch_size]).to(vae.device, vae.dtype)
        modes.append(encode_posterior(vae, pixels, frame_convs="2d").mode().float().cpu())
    vae.train(training)
    flat = torch.cat(modes).transpose(0, 1).flatten(1)
    return flat.mean(dim=1).tolist(), flat.std(dim=1).clamp_min(1e-4).tolist()


# Ray Train.
def train_loop_per_worker(loop_config: dict) -> None:
    config = VaeTrainConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    vae = build_vae(config).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=0.0)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            info, _ = load_checkpoint(folder, model=vae, optimizer=optimizer, rank=rank)
            step = int(info["step"])
    images = images_to_tensor(scene_images(config.data, config.seed, rows=slice(rank, None, world))).to(device)
    heldout = scene_images(config.data, config.seed, heldout=True) if rank == 0 else None
    model = ray.train.torch.prepare_model(Autoencoder(vae))  # DDP when world > 1
    perceptual = PerceptualLoss(config.perceptual).to(device)
    writer = MetricsWriter(pathlib.Path(config.output_dir) / config.run_name) if rank == 0 else None
    total: dict[str, float] = {}
    batch_size = min(config.batch_size, len(images))
    batches_per_epoch = len(images) // batch_size
    while step < config.num_steps:
        # Batches and posterior noise follow (seed, rank, step): a resumed run sees what the first one would have.
        epoch, position = divmod(step, batches_per_epoch)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch))
        index = order[position * batch_size : (position + 1) * batch_size].to(device)
        noise = torch.Generator(device=device).manual_seed(config.seed * 104729 + rank * 7 + step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        reconstruction, kl, means = model(images[index], noise)
        loss, parts = loss_terms(reconstruction, kl, means, images[index], config, perceptual)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(vae.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        for key, value in {"loss": float(loss.detach()), "grad_norm": float(grad_norm), **parts}.items():
            total[key] = total.get(key, 0.0) + value
        total["steps"] = total.get("steps", 0.0) + 1
        last = step == config.num_steps
        if step % config.log_every and step % config.checkpoint_every and step % config.eval_every and not last:
            continue
        count = total.pop("steps")
        row = {"step": step, "phase": "vae", "resolution": config.data.resolution, "lr": learning_rate(config, step)}
        row.update({key: value / count for key, value in total.items()})
        total.clear()
        if writer is not None:
            if step % config.eval_every == 0 or last:
                row["heldout_psnr"] = reconstruction_scores(heldout, reconstruct(vae, heldout))["psnr"]
            writer.write(row)
        if step % config.checkpoint_every == 0 or last:
            if last and rank == 0:
                mean, std = latent_statistics(vae, heldout)
                vae.register_to_config(latents_mean=mean, latents_std=std)
                save_vae(export_folder(config), vae, config, step)
            info = {"step": step, "run": config.run_name}
            report_checkpoint(row, model=vae, optimizer=optimizer, rank=rank, world=world, info=info)
    if writer is not None:
        writer.close()


def export_folder(config: VaeTrainConfig) -> pathlib.Path:
    return pathlib.Path(config.output_dir) / config.run_name / "exports" / f"step{config.num_steps:07d}-vae"


def save_vae(folder: pathlib.Path, vae: AutoencoderKLQwenImage, config: VaeTrainConfig, step: int) -> pathlib.Path:
    """The trained VAE in the diffusers layout (``vae/``, ``model_index.json``), with the run in its metadata."""
    metadata = {"step": step, "run": config.run_name, "trained": "vae", "seed": config.seed}
    return save_components(folder, Components(preset=config.preset, vae=vae), metadata=metadata)


def run_training(config: VaeTrainConfig) -> dict:
    """Train on Ray Train, then score the held-out scenes before (initialisation) and after; returns where things are."""
    config = config.model_copy(update={"output_dir": str(pathlib.Path(config.output_dir).resolve())})
    folder = pathlib.Path(config.output_dir) / config.run_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config.model_dump_json(indent=2))
    heldout = scene_images(config.data, config.seed, heldout=True)
    before = reconstruct(build_vae(config), heldout)
    print(
        f"[train_vae] {config.num_steps} steps of batch {config.batch_size} on {config.data.num_train_images} "
        f"{config.data.resolution}px scenes",
        flush=True,
    )
    keys = ("loss", "l1", "latent_prior", "heldout_psnr")
    progress = Progress(folder / "metrics.csv", config.num_steps, "train_vae", keys)
    fit_trainer(train_loop_per_worker, config, name=config.run_name, storage_path=folder / "ray", progress=progress)
    final = export_folder(config)
    vae = AutoencoderKLQwenImage.from_pretrained(final / "vae")
    after = reconstruct(vae, heldout)
    scores = {"before": reconstruction_scores(heldout, before), "after": reconstruction_scores(heldout, after)}
    shown = min(8, len(heldout))
    grid = np.concatenate([heldout[:shown], before[:shown], after[:shown]])
    labels = ["original"] * shown + ["untrained"] * shown + ["trained"] * shown
    summary = {
        "checkpoint": str(final),
        "heldout": scores,
        "grid": str(save_png(to_grid(grid, columns=shown, labels=labels), folder / "heldout_reconstructions.png")),
        "metrics": str(folder / "metrics.csv"),
        "curve": str(plot_vae_curve(folder / "metrics.csv", folder / "vae_curve.png")),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def plot_vae_curve(csv_path: pathlib.Path, png_path: pathlib.Path) -> pathlib.Path:
    """Training loss and held-out PSNR per step, side by side."""
    import matplotlib.pyplot as plt

    from training.metrics import read_metrics, save_figure

    rows = read_metrics(csv_path)
    steps = [int(row["step"]) for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    left.plot(steps, [float(row["loss"]) for row in rows], color="#1F4E79")
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    scored = [(int(row["step"]), float(row["heldout_psnr"])) for row in rows if row.get("heldout_psnr")]
    if scored:
        right.plot(*zip(*scored, strict=True), marker="o", color="#B5452B")
    right.set_xlabel("step")
    right.set_ylabel("held-out PSNR (dB)")
    figure.tight_layout()
    return save_figure(figure, png_path)


SHIPPED = pathlib.Path(__file__).resolve().parents[1] / "models" / "weights" / "nano_vae"


def ship(summary: dict, config: VaeTrainConfig, folder: pathlib.Path = SHIPPED) -> pathlib.Path:
    """The trained VAE as the repository ships it: float16 weights (half the bytes; loaded back as float32), its
    config, and how it was made (the run's config, summary with held-out scores, curve and reconstruction grid)."""
    import shutil

    vae = AutoencoderKLQwenImage.from_pretrained(pathlib.Path(summary["checkpoint"]) / "vae")
    folder.mkdir(parents=True, exist_ok=True)
    vae.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    (folder / "train_config.json").write_text(config.model_dump_json(indent=2))
    (folder / "train_summary.json").write_text(json.dumps(summary["heldout"], indent=2))
    shutil.copyfile(summary["curve"], folder / "curve.png")
    shutil.copyfile(summary["grid"], folder / "heldout_reconstructions.png")
    shutil.copyfile(summary["metrics"], folder / "metrics.csv")
    return folder
