"""DPO on Ray Train: pairs built (optionally) by Ray Data jobs, then one ``TorchTrainer`` run of ``dpo_step``.

Each worker reads the committed pairs, keeps the held-out ones aside (by pair id), trains on every ``world``-th of
the rest in shuffled single-shape batches; every ``eval_every`` steps and at the end the workers measure held-out
pair accuracy and margin together (rank 0 writes them). The data order is a pure function of (seed, epoch, rank), so a restart skips
what was consumed and goes on.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import torch

from models.checkpoint import read_metadata
from training.metrics import MetricsWriter
from training.post_training.config import DpoConfig
from training.post_training.curves import plot_curves
from training.post_training.dpo import dpo_step, evaluate_pairs
from training.post_training.pairs import build_pairs, num_batches, pair_batches, read_pairs, split_pairs, to_device
from training.post_training.runner import Worker, adapter_summary, export_folder, fit, with_absolute_paths


def train_loop_per_worker(loop_config: dict) -> None:
    config = DpoConfig.model_validate(loop_config["config"])
    worker = Worker(config, need_reference=True)
    train, held = split_pairs(read_pairs(config.pairs_dir, config.resolution), config.eval_fraction, config.seed)
    mine = train.take(pa.array(np.arange(worker.rank, train.num_rows, worker.world)))
    per_epoch = num_batches(mine, config.batch_size)
    if per_epoch == 0:
        raise ValueError(
            f"worker {worker.rank} has {mine.num_rows} training pairs, no full batch of {config.batch_size} in one "
            "bucket: lower batch_size or build more pairs"
        )
    # Every rank evaluates the same held-out pairs together (under FSDP a forward pass is a collective); rank 0
    # writes the result.
    rng = np.random.default_rng(0)
    held_batches = [
        to_device(batch, worker.device)
        for batch in pair_batches(held, config.batch_size, config.resolution, rng=rng, drop_last=False)
    ]
    writers = (
        (MetricsWriter(config.run_folder, "train"), MetricsWriter(config.run_folder, "eval"))
        if worker.rank == 0
        else None
    )

    def evaluate() -> None:
        if not held_batches:
            return
        worker.model.eval()
        with worker.autocast():
            metrics = evaluate_pairs(
                worker.policy.transformer,
                worker.policy.reference,
                held_batches,
                beta=config.beta,
                num_draws=config.eval_draws,
                sigma_sampling=config.sigma_sampling,
                seed=config.seed,
            )
        worker.model.train()
        if writers is not None:
            writers[1].write({"step": worker.step, **metrics})
            print(f"[dpo] step {worker.step}: held-out {json.dumps(metrics)}", flush=True)

    if worker.step == 0:
        evaluate()
    sums, count, started = {}, 0, time.perf_counter()
    while worker.step < config.num_steps:
        epoch, skip = divmod(worker.step, per_epoch)
        rng = np.random.default_rng([config.seed, epoch, worker.rank])
        for batch in pair_batches(mine, config.batch_size, config.resolution, rng=rng, skip=skip):
            lr = worker.set_learning_rate()
            # Sigmas and noise depend on (seed, step, rank) only: a resumed run draws the same ones.
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + worker.step * 97 + worker.rank)
            with worker.autocast():
                metrics = dpo_step(
                    worker.model,
                    worker.optimizer,
                    worker.policy.reference,
                    to_device(batch, worker.device),
                    beta=config.beta,
                    sft_weight=config.sft_weight,
                    sigma_sampling=config.sigma_sampling,
                    grad_clip=config.optim.grad_clip,
                    generator=generator,
                )
            worker.step += 1
            count += 1
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            last = worker.step == config.num_steps
            if last or (config.eval_every and worker.step % config.eval_every == 0):
                evaluate()
            checkpoint = worker.step % config.checkpoint_every == 0 or last
            if worker.step % config.log_every == 0 or checkpoint:
                elapsed = time.perf_counter() - started
                row = {"step": worker.step, **{key: value / count for key, value in sums.items()}, "lr": lr}
                row["pairs_per_s"] = count * config.batch_size * worker.world / max(elapsed, 1e-9)
                sums, count, started = {}, 0, time.perf_counter()
                if writers is not None:
                    writers[0].write(row)
                if last:
                    worker.export(loop_config["base"], "dpo")
                worker.report(row, checkpoint=checkpoint, algo="dpo")
            if last:
                break
    if writers is not None:
        for writer in writers:
            writer.close()


def run_dpo(config: DpoConfig) -> dict:
    """Build the configured pairs (once per run), train, plot; returns where the checkpoint and curves are."""
    config = with_absolute_paths(config, "pairs_dir")
    folder = config.run_folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config.model_dump_json(indent=2))
    marker = folder / "pairs.done.json"
    if (config.from_reward or config.from_labels) and not marker.exists():
        preset = read_metadata(config.init).get("preset", "qwen-image")
        print(f"[dpo] building preference pairs into {config.pairs_dir}", flush=True)
        marker.write_text(json.dumps({"submitted": build_pairs(config, preset)}))
    pairs = read_pairs(config.pairs_dir, config.resolution)
    print(f"[dpo] {pairs.num_rows} pairs at {config.resolution}px; training {config.num_steps} steps", flush=True)
    result = fit(train_loop_per_worker, config, {}, label="dpo", total_steps=config.num_steps, keys=("loss", "margin"))
    summary = {
        "checkpoint": str(export_folder(config, config.num_steps, "dpo")),
        **adapter_summary(config, config.num_steps, "dpo"),
        "pairs": config.pairs_dir,
        "num_pairs": pairs.num_rows,
        "metrics": str(folder / "train.csv"),
        "loss_curve": str(plot_curves(folder / "train.csv", folder / "loss_curve.png", ["loss", "margin", "accuracy"])),
        "final": result.metrics,
    }
    if (folder / "eval.csv").exists():
        summary["reward_curve"] = str(
            plot_curves(
                folder / "eval.csv",
                folder / "reward_curve.png",
                ["eval_accuracy", "eval_margin"],
                title="held-out pairs: accuracy and implicit reward margin",
            )
        )
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
