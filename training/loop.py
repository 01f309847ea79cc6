"""The per-worker pretraining loop of one phase, run by Ray Train (``TorchTrainer``).

Reads top to bottom: build (model, optimiser, schedule), restore (from this phase's last checkpoint, or the previous
phase's final one), train (micro-batches from the store shard, flow-matching loss, accumulation, clipping),
report (metrics every ``log_every`` steps, a checkpoint every ``checkpoint_every`` steps and at the phase end).
``TrainState`` is what survives a restart: step, data position, RNG states, EMA weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import signal
import tempfile
import time

import numpy as np
import ray.train
import ray.train.torch
import torch

from models.checkpoint import save_components
from models.condition_encoder import PromptEmbeds
from models.flow_matching import flow_matching_loss
from models.presets import Components, build_components
from training.config import PretrainConfig
from training.data import DatasetStream, StoreStream
from training.parallel import apply_parallelism, unwrap
from training.state_io import load_state, save_state

TRAIN_STATE = "train_state"


@dataclasses.dataclass
class TrainState:
    """Progress that must survive a restart (with the model and optimiser saved beside it)."""

    step: int = 0  # optimiser steps done, counted over all phases
    epoch: int = 0  # passes over this phase's data
    batch_in_epoch: int = 0  # micro-batches consumed in the current epoch

    def state_dict(self, positions: list[list[int]] | None = None) -> dict:
        return {
            **dataclasses.asdict(self),
            # Every rank's (epoch, batch_in_epoch): ranks read different shards, so their epochs end apart.
            "positions": positions or [[self.epoch, self.batch_in_epoch]],
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": torch.from_numpy(np.frombuffer(np.random.get_state()[1].tobytes(), dtype=np.uint8).copy()),
        }

    def load_state_dict(self, state: dict, rank: int = 0) -> None:
        self.step = int(state["step"])
        positions = state.get("positions") or [[state["epoch"], state["batch_in_epoch"]]]
        self.epoch, self.batch_in_epoch = (int(v) for v in positions[rank if rank < len(positions) else 0])
        torch.set_rng_state(state["torch_rng"])


def gather_positions(state: TrainState, world: int, device: torch.device) -> list[list[int]]:
    """Every rank's data position, on every rank (a collective: all ranks call it)."""
    if world == 1 or not torch.distributed.is_initialized():
        return [[state.epoch, state.batch_in_epoch]]
    mine = torch.tensor([state.epoch, state.batch_in_epoch], dtype=torch.long, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(everyone, mine)
    return [tensor.tolist() for tensor in everyone]


def learning_rate(step: int, config: PretrainConfig, lr_scale: float) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio`` over the whole run."""
    optim = config.optim
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * lr_scale * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr * lr_scale
    progress = min(1.0, (step - optim.warmup_steps) / max(1, config.total_steps - optim.warmup_steps))
    floor = optim.min_lr_ratio
    return optim.lr * lr_scale * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _autocast(config: PretrainConfig, device: torch.device):
    use_bf16 = config.mixed_precision == "bf16" or (config.mixed_precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()


def _save_checkpoint(
    folder: pathlib.Path, model, optimizer, ema, state: TrainState, config: PretrainConfig, positions: list[list[int]]
) -> None:
    transformer = unwrap(model)
    save_components(
        folder / "model",
        Components(preset=config.preset, transformer=transformer),
        metadata={"step": state.step, "run": config.run_name},
    )
    extra = {"optimizer": optimizer.state_dict(), "train_state": state.state_dict(positions)}
    if ema is not None:
        extra["ema"] = ema
    save_state(extra, folder, TRAIN_STATE)


def _restore(folder: pathlib.Path, model, optimizer, state: TrainState | None, rank: int = 0) -> dict | None:
    from safetensors.torch import load_file

    weights = {}
    for path in sorted((folder / "model" / "transformer").glob("*.safetensors")):
        weights.update(load_file(str(path)))
    unwrap(model).load_state_dict(weights)
    saved = load_state(folder, TRAIN_STATE)
    optimizer.load_state_dict(saved["optimizer"])
    if state is not None:
        state.load_state_dict(saved["train_state"], rank)
    return saved.get("ema")


def _sample_grid(model, loop_config: dict, config: PretrainConfig, step: int, phase_name: str) -> None:
    """Rank 0: images for the fixed prompts and edits (their condition embeddings were computed on the driver)."""
    from models.imageio import save_png, to_grid
    from models.vae import LatentVAE

    prompts = loop_config.get("sample_prompts")
    if not prompts or not (prompts["embeds"] or prompts.get("edits")):
        return
    transformer = unwrap(model)
    device = next(transformer.parameters()).device
    vae = LatentVAE(build_components(config.preset, weights_dir=config.weights_dir, parts=("vae",), device=device).vae)
    resolution = loop_config["phase"]["resolution"]
    size = min(resolution, 256) if device.type == "cpu" else resolution  # keep CPU grids quick
    folder = pathlib.Path(config.output_dir) / config.run_name / "samples"
    was_training = transformer.training
    transformer.eval()
    try:
        if prompts["embeds"]:
            images = _sample_prompts(transformer, vae, prompts, config, size, device)
            grid = to_grid(images, columns=len(images), labels=prompts["texts"])
            save_png(grid, folder / f"step{step:07d}-{phase_name}.png")
        if prompts.get("edits"):
            cells, labels = _sample_edits(transformer, vae, prompts["edits"], config, size, device)
            grid = to_grid(np.stack(cells), columns=2, labels=labels)
            save_png(grid, folder / f"step{step:07d}-{phase_name}-edits.png")
    finally:
        transformer.train(was_training)


def _sample_edits(transformer, vae, edits: list[dict], config: PretrainConfig, size: int, device):
    """Each edit's input image and result (one sampler call per edit: inputs differ in aspect ratio)."""
    from PIL import Image

    from models.generation import edit_source_size, resize_lanczos
    from models.vae import images_to_tensor, tensor_to_images

    cells, labels = [], []
    for index, edit in enumerate(edits):
        image = Image.fromarray(np.asarray(edit["image"], dtype=np.uint8))
        source = np.array(resize_lanczos(image, *edit_source_size(size * size, *image.size)))
        source_latents = vae.encode(images_to_tensor(source[None]).to(device)).float()
        latents = _grid_latents(
            transformer,
            _single_prompt(edit["embeds"], device),
            _single_prompt(edit["negative"], device),
            config,
            size,
            first_seed=config.samples.seed + index,
            source_latents=source_latents,
        )
        result = tensor_to_images(vae.decode(latents))[0]
        cells += [np.asarray(resize_lanczos(image, size, size)), result]
        labels += ["input", edit["instruction"]]
    return cells, labels


def _sample_prompts(transformer, vae, prompts: dict, config: PretrainConfig, size: int, device) -> np.ndarray:
    """The fixed prompts' images, uint8 ``[N, size, size, 3]``."""
    from models.condition_encoder import pad_prompt_embeds
    from models.vae import tensor_to_images

    prompt = pad_prompt_embeds([torch.from_numpy(np.asarray(e, dtype=np.float32)) for e in prompts["embeds"]])
    negative = _single_prompt(prompts["negative"], device)
    latents = _grid_latents(transformer, prompt.to(device), negative, config, size, first_seed=config.samples.seed)
    return tensor_to_images(vae.decode(latents))


def _single_prompt(embeds, device) -> PromptEmbeds:
    """One prompt's unpadded ``[L, D]`` embeddings (as the driver sent them) as a batch of one."""
    tensor = torch.from_numpy(np.asarray(embeds, dtype=np.float32))[None].to(device)
    return PromptEmbeds(tensor, torch.ones(1, tensor.shape[1], dtype=torch.long, device=device))


def _grid_latents(transformer, prompt, negative, config: PretrainConfig, size: int, *, first_seed: int, **kwargs):
    """The sample-grid sampler call: the config's steps and CFG, seed ``first_seed + i`` for row ``i``."""
    from models.sampler import sample

    count = prompt.embeds.shape[0]
    return sample(
        transformer,
        prompt,
        height=size,
        width=size,
        num_steps=config.samples.num_steps,
        negative=negative,
        true_cfg_scale=config.samples.true_cfg_scale,
        generator=[torch.Generator().manual_seed(first_seed + i) for i in range(count)],
        **kwargs,
    )


def train_loop_per_worker(loop_config: dict) -> None:
    config = PretrainConfig.model_validate(loop_config["config"])
    phase = config.phases[loop_config["phase_index"]]
    start, end = config.phase_bounds()[loop_config["phase_index"]]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed + rank)
    np.random.seed(config.seed + rank)

    # Build.
    transformer = build_components(
        config.preset,
        weights_dir=config.init_transformer or config.weights_dir,
        parts=("transformer",),
        seed=config.seed,
    ).transformer
    transformer.train().requires_grad_(True)
    model = apply_parallelism(transformer, config, device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.optim.lr,
        betas=config.optim.betas,
        weight_decay=config.optim.weight_decay,
        eps=config.optim.eps,
    )
    state, ema = TrainState(step=start), None

    # Restore: this phase's latest checkpoint (a restart), else the previous phase's final one.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            ema = _restore(pathlib.Path(folder), model, optimizer, state, rank)
    elif loop_config.get("init_checkpoint"):
        ema = _restore(pathlib.Path(loop_config["init_checkpoint"]), model, optimizer, None)
    restored_step = state.step  # where this attempt starts: the phase start, or the restored checkpoint's step
    if config.ema_decay is not None and ema is None:
        ema = {name: p.detach().float().cpu().clone() for name, p in unwrap(model).named_parameters()}

    # Train.
    if config.feed == "stream":
        stream = DatasetStream(
            ray.train.get_dataset_shard("train"),
            phase,
            seed=config.seed + rank,
            batch_size=config.batch_size,
            shuffle_buffer=config.shuffle_buffer,
        )
    else:
        stream = StoreStream(
            config.store_dir,
            phase,
            seed=config.seed,
            rank=rank,
            world=world,
            batch_size=config.batch_size,
            shuffle_buffer=config.shuffle_buffer,
        )
    writer = _metrics_writer(config) if rank == 0 else None
    meter = _Meter()
    while state.step < end:
        batches = stream.batches(state.epoch, skip=state.batch_in_epoch)
        stepped = False
        for group in _accumulate(batches, config.optim.grad_accum, state, meter):
            loss, grad_norm = _train_step(model, optimizer, group, state, config, phase.lr_scale, device, rank)
            stepped = True
            if ema is not None:
                _update_ema(ema, model, config.ema_decay)
            meter.add_step(loss, group)
            _maybe_fail(config, state.step, rank)
            last = state.step == end
            if state.step % config.log_every == 0 or state.step % config.checkpoint_every == 0 or last:
                metrics = meter.flush(state.step, phase.name, optimizer.param_groups[0]["lr"], grad_norm, world)
                metrics["resolution"] = phase.resolution
                metrics["restored_step"] = restored_step
                if writer is not None:
                    writer.write(metrics)
                # Metrics reach Ray Train with checkpoints only: every report is a barrier across the workers and
                # waits for the controller (about 2 s a step here); metrics.csv and TensorBoard get every log step.
                if state.step % config.checkpoint_every == 0 or last:
                    positions = gather_positions(state, world, device)
                    _report_checkpoint(model, optimizer, ema, state, config, metrics, rank, positions)
            if rank == 0 and config.samples.every_steps and state.step % config.samples.every_steps == 0 and not last:
                _sample_grid(model, loop_config, config, state.step, phase.name)
            if last:
                break
        if state.step >= end:
            break
        if not stepped:
            raise ValueError(
                f"phase {phase.name!r} has no complete batch of {config.batch_size} rows at {phase.resolution}px on "
                f"this worker; lower batch_size or add data that reaches stage {phase.min_stage}"
            )
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    if rank == 0:
        _sample_grid(model, loop_config, config, state.step, phase.name)
        writer.close()


class _Meter:
    """Sums over the steps since the last log line: loss, samples, latent tokens, time spent waiting for data."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.steps, self.samples, self.tokens, self.wait = 0.0, 0, 0, 0, 0.0
        self.start = time.perf_counter()

    def add_step(self, loss: float, group: list[dict]) -> None:
        self.loss += loss
        self.steps += 1
        for batch in group:
            latents = batch["latents"]
            self.samples += latents.shape[0]
            self.tokens += latents.shape[0] * (latents.shape[2] // 2) * (latents.shape[3] // 2)

    def flush(self, step: int, phase: str, lr: float, grad_norm: float, world: int) -> dict:
        elapsed = max(1e-9, time.perf_counter() - self.start)
        metrics = {
            "step": step,
            "phase": phase,
            "loss": self.loss / max(1, self.steps),
            "lr": lr,
            "samples_per_s": self.samples * world / elapsed,
            "latent_tokens_per_s": self.tokens * world / elapsed,
            "data_wait_fraction": self.wait / elapsed,
            "grad_norm": grad_norm,
        }
        self.reset()
        return metrics


def _accumulate(batches, grad_accum: int, state: TrainState, meter: _Meter):
    """Groups of ``grad_accum`` micro-batches; counts each consumed micro-batch in the data position."""
    group = []
    while True:
        waited = time.perf_counter()
        batch = next(batches, None)
        meter.wait += time.perf_counter() - waited
        if batch is None:
            return  # an epoch ending inside a group drops the partial group
        state.batch_in_epoch += 1
        group.append(batch)
        if len(group) == grad_accum:
            yield group
            group = []


def _train_step(model, optimizer, group, state: TrainState, config: PretrainConfig, lr_scale: float, device, rank: int):
    for param_group in optimizer.param_groups:
        param_group["lr"] = learning_rate(state.step, config, lr_scale)
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for micro, batch in enumerate(group):
        latents = batch["latents"].to(device, torch.float32)
        prompt = PromptEmbeds(batch["text_embeds"].to(device, torch.float32), batch["text_mask"].to(device))
        # Edit batches (all rows of a batch are one kind): the clean source image's latents condition the model.
        source = batch.get("source_latents")
        source = None if source is None else source.to(device, torch.float32)
        # Noise and sigmas depend on (seed, step, micro-batch, rank) only: a resumed run draws the same ones.
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + state.step * 97 + micro * 7 + rank)
        last_micro = micro == len(group) - 1
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync, _autocast(config, device):
            out = flow_matching_loss(
                model,
                latents,
                prompt,
                sigma_sampling=config.loss.sigma_sampling,
                logit_mean=config.loss.logit_mean,
                logit_std=config.loss.logit_std,
                weighting=config.loss.weighting,
                generator=generator,
                source_latents=source,
            )
            (out.loss / len(group)).backward()
        losses.append(float(out.loss.detach()))
    grad_norm = 0.0
    if config.optim.grad_clip is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip))
    optimizer.step()
    state.step += 1
    return sum(losses) / len(losses), grad_norm


def _update_ema(ema: dict, model, decay: float) -> None:
    with torch.no_grad():
        for name, param in unwrap(model).named_parameters():
            ema[name].mul_(decay).add_(param.detach().float().cpu(), alpha=1 - decay)


def _maybe_fail(config: PretrainConfig, step: int, rank: int) -> None:
    """Failure injection for the restart tests: the first time ``fail_at_step`` is reached, rank 0's worker process
    dies by SIGKILL (no exception, no clean-up: what a lost node or the OOM killer does to it).

    It dies once the controller has registered the last checkpoint reported: Ray Train's controller collects reports
    by polling (about every 2 s here), and a worker that dies before its last report is collected restarts from the
    checkpoint before that one. The test is about restoring, so it waits that window out."""
    if config.fail_at_step is None or step != config.fail_at_step or rank != 0:
        return
    marker = pathlib.Path(config.output_dir) / config.run_name / f".failed-at-{step}"
    if marker.exists():
        return
    _wait_for_registered_checkpoint(config, step - step % config.checkpoint_every)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"worker process {os.getpid()} killed with SIGKILL at step {step}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_for_registered_checkpoint(config: PretrainConfig, checkpoint_step: int, timeout_s: float = 120.0) -> None:
    """Until the controller's checkpoint snapshot lists the checkpoint of ``checkpoint_step`` (or a later one)."""
    import json

    experiment = ray.train.get_context().get_experiment_name()
    snapshot = (
        pathlib.Path(config.output_dir) / config.run_name / "ray" / experiment / "checkpoint_manager_snapshot.json"
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being written
            latest = {}
        if int(latest.get("metrics", {}).get("step", -1)) >= checkpoint_step:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the checkpoint of step {checkpoint_step} was not registered within {timeout_s:.0f} s")


def _metrics_writer(config: PretrainConfig):
    from training.metrics import MetricsWriter

    return MetricsWriter(pathlib.Path(config.output_dir) / config.run_name)


def _report_checkpoint(model, optimizer, ema, state, config, metrics, rank, positions) -> None:
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            _save_checkpoint(pathlib.Path(folder), model, optimizer, ema, state, config, positions)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)
