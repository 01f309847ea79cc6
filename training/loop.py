"""The per-worker pretraining loop of one phase, run by Ray Train (``TorchTrainer``).

Reads top to bottom: build (the transformer on the meta device, spread by ``training.parallel``, its shards
loaded; optimiser; EMA), restore (this phase's last checkpoint after a restart, or the previous phase's final one),
train (micro-batches from the store shard, flow-matching loss, accumulation, clipping), report (metrics every
``log_every`` steps, a DCP checkpoint every ``checkpoint_every`` steps, an export at the phase end). Every rank runs
every line: checkpoints, exports and sample grids are collectives; rank 0 alone writes metrics and pictures.
``TrainState`` is what survives a restart besides the weights: step, data position, RNG state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import time

import numpy as np
import ray.train
import ray.train.torch
import torch

from models.flow_matching import flow_matching_loss
from models.presets import build_components
from models.prompt_embeds import PromptEmbeds
from store import columns as C
from store.header import EDIT_VISION_AREA
from training.checkpointer import export_adapter, export_pipeline, load_checkpoint, report_checkpoint
from training.config import PretrainConfig
from training.data import DatasetStream, StoreStream
from training.optim import adamw
from training.parallel import (
    Parallel,
    autocast,
    build_mesh,
    build_meta_transformer,
    cast_frozen_,
    clip_grad_norm_,
    compute_dtype,
    frozen_weights_dtype,
    gradient_sync,
    parallelize,
    reduce_tensor_parallel_gradients,
    unwrap,
)
from training.schedule import learning_rate, set_learning_rate


@dataclasses.dataclass
class TrainState:
    """Progress that must survive a restart (with the model and optimiser saved beside it)."""

    step: int = 0  # optimiser steps done, counted over all phases
    epoch: int = 0  # passes over this phase's data
    batch_in_epoch: int = 0  # micro-batches consumed in the current epoch
    world: int = 1  # workers of this attempt

    def rank_state(self) -> dict:
        """This rank's part of a checkpoint: its data position and RNG state."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "torch_rng": torch.get_rng_state()}

    def restore(self, info: dict, rank_state: dict | None) -> None:
        """From a checkpoint's info (step, every rank's position) and this rank's own state when it wrote one.

        A checkpoint written by a different number of workers sharded the data differently: every rank then
        starts the earliest saved epoch again from its beginning (a position cannot be carried across shardings)."""
        self.step = int(info["step"])
        if rank_state is not None and int(info["world_size"]) == self.world:
            self.epoch, self.batch_in_epoch = int(rank_state["epoch"]), int(rank_state["batch_in_epoch"])
            torch.set_rng_state(rank_state["torch_rng"])
        else:
            self.epoch, self.batch_in_epoch = min(epoch for epoch, _ in info["positions"]), 0


def gather_positions(state: TrainState, world: int, device: torch.device) -> list[list[int]]:
    """Every rank's data position, on every rank (a collective: all ranks call it)."""
    if world == 1 or not torch.distributed.is_initialized():
        return [[state.epoch, state.batch_in_epoch]]
    mine = torch.tensor([state.epoch, state.batch_in_epoch], dtype=torch.long, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(everyone, mine)
    return [tensor.tolist() for tensor in everyone]


def phase_learning_rate(step: int, config: PretrainConfig, lr_scale: float) -> float:
    optim = config.optim
    return learning_rate(
        step,
        lr=optim.lr,
        warmup_steps=optim.warmup_steps,
        schedule=optim.schedule,
        total_steps=config.total_steps,
        min_lr_ratio=optim.min_lr_ratio,
        scale=lr_scale,
    )


def build_model(config: PretrainConfig, parallel: Parallel, *, restoring: bool) -> torch.nn.Module:
    """The transformer built on the meta device, spread over the workers and filled: from ``init`` or
    ``weights_dir`` (each rank reading its slices), from the tiny preset's random weights (broadcast from rank 0),
    or not at all when a checkpoint is about to be restored into it. With LoRA the adapters are added on the meta
    device, the base is always read from its folder (checkpoints hold the adapters only) and stored in
    ``frozen_dtype``, and only the adapters require gradients."""
    from models.lora import add_lora, init_lora_
    from models.presets import BUILT_PRESETS
    from models.presets import transformer_config as built_transformer_config

    source = config.init or config.weights_dir
    if source is not None:
        folder = pathlib.Path(source) / "transformer"
        transformer_config = json.loads((folder / "config.json").read_text())
    elif config.preset in BUILT_PRESETS:
        folder, transformer_config = None, built_transformer_config(config.preset)
    else:
        raise ValueError(f"preset {config.preset!r} needs weights_dir (a diffusers folder with transformer/)")
    model = build_meta_transformer(transformer_config)
    dtype = compute_dtype(config.mixed_precision, parallel.device)
    if config.lora is not None:
        add_lora(model, config.lora)
        cast_frozen_(model, frozen_weights_dtype(config.frozen_dtype, config.parallel.strategy, dtype))
    fill = {}
    if not restoring or config.lora is not None:
        if folder is not None:
            fill["weights_folder"] = folder
        else:
            fill["build_full"] = lambda: (
                build_components(config.preset, parts=("transformer",), seed=config.seed).transformer
            )
    quantize = config.lora.quantize if config.lora is not None else "none"
    if quantize != "none":
        from models.lora import check_quantize, quantize_base_

        check_quantize(quantize, parallel.device)
        fill["prepare"] = lambda loaded: quantize_base_(loaded, quantize)
    model = parallelize(model, parallel, param_dtype=dtype, **fill)
    model.train()
    if config.lora is None:
        unwrap(model).requires_grad_(True)
    elif not restoring:
        init_lora_(unwrap(model), config.seed)
    return model


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the optimiser steps: every weight, or the adapters alone with LoRA."""
    return [param for param in model.parameters() if param.requires_grad]


def new_ema(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Exponential moving average of the trained weights (the adapters with LoRA): fp32 copies on the device,
    sharded like the parameters."""
    named = unwrap(model).named_parameters()
    return {name: param.detach().float().clone() for name, param in named if param.requires_grad}


def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * weights``, on the device, shard by shard (no host copies)."""
    params = dict(unwrap(model).named_parameters())
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.values()), [params[name].detach() for name in ema], 1 - decay)


def _sample_grid(model, loop_config: dict, config: PretrainConfig, step: int, phase_name: str, device, rank) -> None:
    """Every rank (the sharded model's forward is a collective): images for the fixed prompts and edits, whose
    condition embeddings the run's prompt task computed (``encode_sample_prompts``); rank 0 writes the grids."""
    from models.imageio import save_png, to_grid
    from models.vae import LatentVAE

    prompts = loop_config.get("sample_prompts")
    if not prompts or not (prompts["embeds"] or prompts.get("edits")):
        return
    transformer = unwrap(model)
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
            if rank == 0:
                save_png(grid, folder / f"step{step:07d}-{phase_name}.png")
        if prompts.get("edits"):
            cells, labels = _sample_edits(transformer, vae, prompts["edits"], config, size, device)
            grid = to_grid(np.stack(cells), columns=2, labels=labels)
            if rank == 0:
                save_png(grid, folder / f"step{step:07d}-{phase_name}-edits.png")
    finally:
        transformer.train(was_training)


def _sample_edits(transformer, vae, edits: list[dict], config: PretrainConfig, size: int, device):
    """Each edit's input images and result (one sampler call per edit: inputs differ in aspect ratio). Every input
    is VAE-encoded at the grid's area in its own aspect ratio, each at its own frame when there are several."""
    from PIL import Image

    from models.generation import edit_source_size, resize_lanczos
    from models.vae import images_to_tensor, tensor_to_images

    cells, labels = [], []
    for index, edit in enumerate(edits):
        images = [Image.fromarray(np.asarray(image, dtype=np.uint8)) for image in edit["images"]]
        references = []
        for image in images:
            source = np.array(resize_lanczos(image, *edit_source_size(size * size, *image.size)))
            references.append(vae.encode(images_to_tensor(source[None]).to(device)).float())
        latents = _grid_latents(
            transformer,
            _single_prompt(edit["embeds"], device),
            _single_prompt(edit["negative"], device),
            config,
            size,
            first_seed=config.samples.seed + index,
            source_latents=references[0] if len(references) == 1 else references,
        )
        result = tensor_to_images(vae.decode(latents))[0]
        cells += [_inputs_cell(images, size), result]
        labels += ["input" if len(images) == 1 else f"inputs 1-{len(images)}", edit["instruction"]]
    return cells, labels


def _inputs_cell(images: list, size: int) -> np.ndarray:
    """The inputs of an edit side by side in one ``size`` x ``size`` cell (several: a row centred on white)."""
    from models.generation import resize_lanczos

    if len(images) == 1:
        return np.asarray(resize_lanczos(images[0], size, size))
    side = size // len(images)
    row = np.concatenate([np.asarray(resize_lanczos(image, side, side)) for image in images], axis=1)
    cell = np.full((size, size, 3), 255, dtype=np.uint8)
    cell[(size - side) // 2 : (size - side) // 2 + side, : row.shape[1]] = row
    return cell


def _sample_prompts(transformer, vae, prompts: dict, config: PretrainConfig, size: int, device) -> np.ndarray:
    """The fixed prompts' images, uint8 ``[N, size, size, 3]``."""
    from models.prompt_embeds import pad_prompt_embeds
    from models.vae import tensor_to_images

    prompt = pad_prompt_embeds([torch.from_numpy(np.asarray(e, dtype=np.float32)) for e in prompts["embeds"]])
    negative = _single_prompt(prompts["negative"], device)
    latents = _grid_latents(transformer, prompt.to(device), negative, config, size, first_seed=config.samples.seed)
    return tensor_to_images(vae.decode(latents))


def _single_prompt(embeds, device) -> PromptEmbeds:
    """One prompt's unpadded ``[L, D]`` embeddings (as the prompt task encoded them) as a batch of one."""
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
    phase_index = loop_config["phase_index"]
    phase = config.phases[phase_index]
    start, end = config.phase_bounds()[phase_index]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed + rank)
    np.random.seed(config.seed + rank)

    # Build.
    parallel = build_mesh(config.parallel, device, world, rank)
    checkpoint = ray.train.get_checkpoint()
    init_checkpoint = loop_config.get("init_checkpoint")
    model = build_model(config, parallel, restoring=checkpoint is not None or bool(init_checkpoint))
    optimizer = adamw(trainable_parameters(model), config.optim)
    ema = new_ema(model) if config.ema_decay is not None else None
    state = TrainState(step=start, world=world)

    # Restore: this phase's latest checkpoint (a restart), else the previous phase's final one.
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            info, mine = _restore(pathlib.Path(folder), model, optimizer, ema, rank, config)
        state.restore(info, mine)
    elif init_checkpoint:
        _restore(pathlib.Path(init_checkpoint), model, optimizer, ema, rank, config)
    restored_step = state.step  # where this attempt starts: the phase start, or the restored checkpoint's step
    if loop_config.get("sample_prompts") is not None:  # the prompt task's reference: it ran while this group started
        loop_config = {**loop_config, "sample_prompts": ray.get(loop_config["sample_prompts"])}
    dropped = None  # what a dropped caption becomes: the empty prompt's embedding [L, D]
    if config.loss.caption_dropout:
        dropped = torch.from_numpy(np.asarray(loop_config["sample_prompts"]["negative"], dtype=np.float32))

    # Train.
    if config.feed == "stream":
        stream = DatasetStream(
            ray.train.get_dataset_shard("train"),
            phase,
            seed=config.seed + rank,
            batch_size=config.batch_size_of(phase),
            shuffle_buffer=config.shuffle_buffer,
        )
    else:  # the workers of one tensor-parallel group read the same rows
        stream = StoreStream(
            config.store_dir,
            phase,
            seed=config.seed,
            rank=parallel.dp_rank,
            world=parallel.dp_world,
            batch_size=config.batch_size_of(phase),
            shuffle_buffer=config.shuffle_buffer,
        )
    writer = _metrics_writer(config) if rank == 0 else None
    meter = _Meter()
    while state.step < end:
        batches = stream.batches(state.epoch, skip=state.batch_in_epoch)
        stepped = False
        for group in _accumulate(batches, config.optim.grad_accum, state, meter):
            loss, grad_norm = _train_step(model, optimizer, group, state, config, phase.lr_scale, parallel, dropped)
            stepped = True
            if ema is not None:
                update_ema(ema, model, config.ema_decay)
            meter.add_step(loss, group)
            _maybe_fail(config, state.step, rank)
            last = state.step == end
            if state.step % config.log_every == 0 or state.step % config.checkpoint_every == 0 or last:
                metrics = meter.flush(state.step, phase.name, optimizer.param_groups[0]["lr"], grad_norm, parallel)
                metrics["resolution"] = phase.resolution
                metrics["restored_step"] = restored_step
                if writer is not None:
                    writer.write(metrics)
                if config.export_every and state.step % config.export_every == 0 and not last:
                    _export(model, config, state.step, phase.name, rank, loop_config["base"])
                # Metrics reach Ray Train with checkpoints only: every report is a barrier across the workers and
                # waits for the controller (about 2 s a step here); metrics.csv and TensorBoard get every log step.
                if state.step % config.checkpoint_every == 0 or last:
                    positions = gather_positions(state, world, device)
                    _report_checkpoint(model, optimizer, ema, state, config, metrics, rank, world, positions)
            if config.samples.every_steps and state.step % config.samples.every_steps == 0 and not last:
                _sample_grid(model, loop_config, config, state.step, phase.name, device, rank)
            if last:
                break
        if state.step >= end:
            break
        if not stepped:
            raise ValueError(
                f"phase {phase.name!r} has no complete batch of {config.batch_size_of(phase)} rows at {phase.resolution}px on "
                f"this worker; lower batch_size or add data that reaches stage {phase.min_stage}"
            )
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    _export(model, config, state.step, phase.name, rank, loop_config["base"])
    _sample_grid(model, loop_config, config, state.step, phase.name, device, rank)
    if writer is not None:
        writer.close()


def export_folder(config: PretrainConfig, step: int, phase_name: str) -> pathlib.Path:
    """Where the export of ``step`` goes: ``<output_dir>/<run_name>/exports/step<step>-<phase>``: the pipeline
    folder, or with LoRA the adapter's folder (the merged pipeline, when asked for, beside it with ``-merged``)."""
    return pathlib.Path(config.output_dir) / config.run_name / "exports" / f"step{step:07d}-{phase_name}"


def merged_folder(adapter_folder: pathlib.Path) -> pathlib.Path:
    return adapter_folder.with_name(f"{adapter_folder.name}-merged")


def _export(model, config: PretrainConfig, step: int, phase_name: str, rank: int, base: str) -> None:
    """Every rank: the complete pipeline folder of the current weights (a collective; rank 0 writes), its frozen
    parts linked from ``base`` (the driver's ``training.pretrain.write_base``). With LoRA: the adapter file in
    diffusers' format, and the merged pipeline when ``lora.merge`` is set."""
    folder = export_folder(config, step, phase_name)
    # The vision area the run's edits were encoded at (training.pretrain.with_edit_vision_area): serving takes it.
    metadata = {
        "step": step,
        "run": config.run_name,
        "phase": phase_name,
        EDIT_VISION_AREA: config.samples.edit_vision_area,
    }
    if config.lora is not None:
        export_adapter(model, folder, rank=rank)
        if not config.lora.merge:
            return
        folder = merged_folder(folder)
    export_pipeline(
        model,
        folder,
        rank=rank,
        dtype=getattr(torch, config.export_dtype),
        base_folder=base,
        preset=config.preset,
        metadata=metadata,
    )


def _restore(folder: pathlib.Path, model, optimizer, ema, rank: int, config) -> tuple[dict, dict | None]:
    """Load a training checkpoint (any number of workers wrote it); an EMA the checkpoint lacks starts afresh.
    With LoRA it holds the adapters and their optimiser states only (the base comes from its folder)."""
    info = json.loads((folder / "checkpoint.json").read_text())
    extra = {"ema": ema} if ema is not None and info.get("ema") else None
    lora = config.lora is not None
    return load_checkpoint(folder, model=model, optimizer=optimizer, rank=rank, extra=extra, trainable_only=lora)


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
            latents = batch[C.LATENTS]
            self.samples += latents.shape[0]
            self.tokens += latents.shape[0] * (latents.shape[2] // 2) * (latents.shape[3] // 2)

    def flush(self, step: int, phase: str, lr: float, grad_norm: float, parallel: Parallel) -> dict:
        """The row of the metrics CSV; throughput counts every data-parallel worker (TP peers share batches)."""
        elapsed = max(1e-9, time.perf_counter() - self.start)
        world = parallel.dp_world
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


def drop_captions(
    prompt: PromptEmbeds, empty: torch.Tensor, rate: float, generator: torch.Generator
) -> tuple[PromptEmbeds, torch.Tensor]:
    """``prompt`` with each row replaced by the empty prompt's embedding ``empty: [L, D]`` with probability
    ``rate`` (drawn from ``generator``), and the boolean mask of dropped rows."""
    batch, length, _ = prompt.embeds.shape
    dropped = torch.rand(batch, generator=generator) < rate
    if not dropped.any():
        return prompt, dropped
    width = max(length, empty.shape[0])
    embeds = torch.nn.functional.pad(prompt.embeds, (0, 0, 0, width - length))
    mask = torch.nn.functional.pad(prompt.mask, (0, width - length))
    rows = dropped.to(embeds.device)
    embeds[rows] = 0
    embeds[rows, : empty.shape[0]] = empty.to(embeds)
    mask[rows] = 0
    mask[rows, : empty.shape[0]] = 1
    return PromptEmbeds(embeds, mask), dropped


def condition_frames(batch: dict, device) -> torch.Tensor | list[torch.Tensor] | None:
    """The clean input images' latents that condition an edit batch (all rows of a batch are one kind, with as
    many input images): ``[B, 16, h, w]`` for one, a list in the stored order for several (Edit-Plus: references 1,
    2, ..., each at its own rotary frame), None for text to image."""
    source = batch.get(C.SOURCE_LATENTS)
    if source is None:
        return None
    source = source.to(device, torch.float32)
    if C.EXTRA_SOURCE_LATENTS not in batch:
        return source
    return [source, *batch[C.EXTRA_SOURCE_LATENTS].to(device, torch.float32).unbind(1)]


def _train_step(
    model, optimizer, group, state: TrainState, config: PretrainConfig, lr_scale: float, parallel, dropped=None
):
    set_learning_rate(optimizer, phase_learning_rate(state.step, config, lr_scale))
    optimizer.zero_grad(set_to_none=True)
    device = parallel.device
    dtype = compute_dtype(config.mixed_precision, device)
    losses = []
    for micro, batch in enumerate(group):
        latents = batch[C.LATENTS].to(device, torch.float32)
        prompt = PromptEmbeds(batch[C.TEXT_EMBEDS].to(device, torch.float32), batch[C.TEXT_MASK].to(device))
        source = condition_frames(batch, device)
        # Noise and sigmas depend on (seed, step, micro-batch, data-parallel rank) only: a resumed run draws the
        # same ones, and the workers of a tensor-parallel group draw the same.
        generator = torch.Generator().manual_seed(
            config.seed * 1_000_003 + state.step * 97 + micro * 7 + parallel.dp_rank
        )
        if dropped is not None and source is None:  # text-to-image batches: see LossConfig.caption_dropout
            prompt, _ = drop_captions(prompt, dropped, config.loss.caption_dropout, generator)
        with gradient_sync(model, micro == len(group) - 1), autocast(parallel, dtype):
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
    reduce_tensor_parallel_gradients(model, parallel.tp_mesh)
    grad_norm = clip_grad_norm_(trainable_parameters(model), config.optim.grad_clip)
    optimizer.step()
    state.step += 1
    return sum(losses) / len(losses), grad_norm


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


def _report_checkpoint(model, optimizer, ema, state, config, metrics, rank, world, positions) -> None:
    report_checkpoint(
        metrics,
        model=model,
        optimizer=optimizer,
        rank=rank,
        world=world,
        extra={"ema": ema} if ema is not None else None,
        rank_state=state.rank_state(),
        info={"step": state.step, "run": config.run_name, "positions": positions, "ema": ema is not None},
        trainable_only=config.lora is not None,
    )
