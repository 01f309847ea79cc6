"""GRPO on Ray: rollout actors (``RolloutWorker``) beside a ``TorchTrainer`` whose workers run ``grpo_update``.

Per iteration, each train worker: pushes the policy weights to the actors when they changed (every rank gathers
them whole, rank 0 sends them), asks the actors for ``group_size`` SDE rollouts of each of its
``prompts_per_iteration`` prompts (scored by the actors), normalises rewards per group, and runs
``num_minibatches`` optimiser steps; under FSDP the ranks step together.
Rank 0 evaluates the policy with the ODE sampler on fixed seeds at the start, every ``eval_every`` iterations and
at the end. Prompts are encoded once, on a Ray task, before anything starts.
"""

from __future__ import annotations

import json
import time

import numpy as np
import ray
import torch

from models.checkpoint import read_metadata
from models.prompt_embeds import PromptEmbeds
from training.metrics import MetricsWriter
from training.post_training.config import GrpoConfig, prompt_list
from training.post_training.curves import plot_curves
from training.post_training.grpo import GrpoSettings, RolloutBatch, group_advantages, grpo_update
from training.post_training.rollout import RolloutWorker, prompt_rows
from training.post_training.runner import Worker, adapter_summary, export_folder, fit, with_absolute_paths
from training.pretrain import encode_sample_prompts


def make_rollout_actors(config: GrpoConfig, prompts: dict) -> list:
    """``num_rollout_actors`` actors, each with the start policy, the VAE, the rewards and the encoded prompts."""
    remote = ray.remote(RolloutWorker)
    settings = {key: getattr(config, key) for key in ("height", "width", "num_steps", "noise_level", "true_cfg_scale")}
    prompts_ref = ray.put(prompts)
    lora = config.lora.model_dump(mode="json") if config.lora is not None else None
    rewards = [spec.model_dump(mode="json") for spec in config.rewards]
    return [
        remote.options(
            name=f"{config.run_name}-rollout-{index}", num_cpus=config.rollout_cpus, num_gpus=config.rollout_gpus
        ).remote(
            config.init,
            config.base_weights_dir,
            lora,
            rewards,
            prompts_ref,
            settings,
            num_threads=max(1, int(config.rollout_cpus)),
        )
        for index in range(config.num_rollout_actors)
    ]


def iteration_prompts(
    config: GrpoConfig, num_prompts: int, step: int, rank: int, world: int, rollout_round: int = 0
) -> list[int]:
    """This rank's prompt indices for iteration ``step`` (and round ``rollout_round`` of dynamic sampling): a seeded
    draw without repeats while prompts last."""
    rng = np.random.default_rng([config.seed, step] + ([rollout_round] if rollout_round else []))
    wanted = config.prompts_per_iteration * world
    drawn = rng.choice(num_prompts, size=wanted, replace=wanted > num_prompts)
    return drawn[rank * config.prompts_per_iteration : (rank + 1) * config.prompts_per_iteration].tolist()


def informative(result: dict) -> bool:
    """Whether a group's images score differently (a group that scores alike has zero advantage everywhere)."""
    return bool(np.ptp(result["rewards"]) > 0)


def choose_groups(rolled: list[dict], wanted: int) -> list[dict]:
    """``wanted`` groups to train on: those whose rewards differ first (in the order rolled), uniform ones after."""
    return ([r for r in rolled if informative(r)] + [r for r in rolled if not informative(r)])[:wanted]


def reward_terms(results: list[dict]) -> dict[str, float]:
    """Mean and spread of the total reward and the mean of each term, over every image rolled out."""
    rewards = np.concatenate([r["rewards"] for r in results])
    terms = {
        name: float(np.concatenate([r["components"][name] for r in results]).mean())
        for name in results[0]["components"]
    }
    return {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(ddof=1)), **terms}


def rollout_batch(results: list[dict], prompts: dict, config: GrpoConfig, device) -> RolloutBatch:
    """Actor results -> a ``RolloutBatch`` with group advantages."""
    rewards = torch.as_tensor(np.concatenate([r["rewards"] for r in results]), dtype=torch.float32)
    advantages = group_advantages(
        rewards.view(-1, config.group_size), eps=config.adv_eps, clip=config.adv_clip
    ).reshape(-1)
    indices = np.concatenate([r["indices"] for r in results]).tolist()
    negative = None
    if config.true_cfg_scale > 1:
        embeds = torch.as_tensor(np.asarray(prompts["negative"], dtype=np.float32))[None]
        negative = PromptEmbeds(embeds, torch.ones(1, embeds.shape[1], dtype=torch.long)).to(device)
    batch = RolloutBatch(
        latents=torch.as_tensor(np.concatenate([r["latents"] for r in results])).to(device),
        old_log_probs=torch.as_tensor(np.concatenate([r["log_probs"] for r in results])).to(device),
        advantages=advantages.to(device),
        prompt=prompt_rows(prompts["embeds"], indices, 1, device),
        sigmas=torch.as_tensor(results[0]["sigmas"]).to(device),
        sigma_max=float(results[0]["sigma_max"]),
        negative=negative,
    )
    return batch


def train_loop_per_worker(loop_config: dict) -> None:
    config = GrpoConfig.model_validate(loop_config["config"])
    actors = ray.get(loop_config["actors"])
    prompts = loop_config["prompts"]
    worker = Worker(config, need_reference=config.kl_beta > 0)
    settings = GrpoSettings(
        train_steps=config.train_steps,
        clip_range=config.clip_range,
        kl_beta=config.kl_beta,
        noise_level=config.noise_level,
        true_cfg_scale=config.true_cfg_scale,
        num_minibatches=config.num_minibatches,
        grad_clip=config.optim.grad_clip,
    )
    writers = (
        (MetricsWriter(config.run_folder, "train"), MetricsWriter(config.run_folder, "eval"))
        if worker.rank == 0
        else None
    )
    pushed = None

    def push_weights() -> float:
        """Every rank gathers the trainable weights (a collective under FSDP) and rank 0 sends them whole to every
        actor, once per version; all ranks wait for it."""
        nonlocal pushed
        started = time.perf_counter()
        if pushed != worker.step:
            state = worker.policy.trainable_state()
            if worker.rank == 0:
                state = ray.put(state)
                ray.get([actor.set_weights.remote(state, worker.step) for actor in actors])
            if worker.world > 1:
                torch.distributed.barrier()
            pushed = worker.step
        return time.perf_counter() - started

    def evaluate() -> None:
        push_weights()
        if writers is None:
            return
        seeds = list(range(config.eval_images_per_prompt))
        evaluated = min(config.eval_prompts or len(prompts["texts"]), len(prompts["texts"]))
        calls = [actors[i % len(actors)].evaluate.remote([i], seeds) for i in range(evaluated)]
        results = ray.get(calls)
        row = {"step": worker.step, "prompts": len(results)}
        row.update({key: float(np.mean([r[key] for r in results])) for key in results[0]})
        writers[1].write(row)
        print(f"[grpo] step {worker.step}: ODE evaluation {json.dumps(row)}", flush=True)

    if worker.step == 0:
        evaluate()
    while worker.step < config.num_iterations:
        sync_s = push_weights()
        started = time.perf_counter()
        rolled = []
        for rollout_round in range(config.max_rollout_rounds):
            indices = iteration_prompts(
                config, len(prompts["texts"]), worker.step, worker.rank, worker.world, rollout_round
            )
            seed_base = (config.seed * 1_000_003 + worker.step) * 1_009 + worker.rank * 101
            seed_base += rollout_round * len(indices)
            calls = [
                actors[(worker.rank * len(indices) + i) % len(actors)].rollout.remote(
                    [index], config.group_size, seed_base + i
                )
                for i, index in enumerate(indices)
            ]
            rolled += ray.get(calls)
            if sum(informative(r) for r in rolled) >= config.prompts_per_iteration:
                break
        results = choose_groups(rolled, config.prompts_per_iteration)
        rollouts_s = time.perf_counter() - started
        batch = rollout_batch(results, prompts, config, worker.device)
        # What the policy scores now: every image rolled out, not only the groups chosen to train on.
        rewards = {
            **reward_terms(rolled),
            "informative_groups": float(sum(informative(r) for r in results)),
            "rollout_rounds": float(rollout_round + 1),
        }
        lr = worker.set_learning_rate()
        updated = time.perf_counter()
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + worker.step * 97 + worker.rank)
        with worker.autocast():
            update = grpo_update(
                worker.model, worker.optimizer, batch, settings, reference=worker.policy.reference, generator=generator
            )
        worker.step += 1
        row = {
            "step": worker.step,
            **rewards,
            **update,
            "lr": lr,
            "images_per_s": len(rolled) * config.group_size / max(rollouts_s, 1e-9),
            "sync_s": sync_s,
            "rollouts_wall_s": rollouts_s,
            "actor_rollout_s": sum(r["rollout_s"] for r in rolled),  # every round's, not only the groups kept
            "actor_reward_s": sum(r["reward_s"] for r in rolled),
            "update_s": time.perf_counter() - updated,
        }
        last = worker.step == config.num_iterations
        if last or (config.eval_every and worker.step % config.eval_every == 0):
            evaluate()
        if writers is not None and (worker.step % config.log_every == 0 or last):
            writers[0].write(row)
            print(f"[grpo] iteration {worker.step}: reward {rewards['reward_mean']:.4f}", flush=True)
        checkpoint = worker.step % config.checkpoint_every == 0 or last
        if last:
            worker.export(loop_config["base"], "grpo")
        if worker.step % config.log_every == 0 or checkpoint:
            worker.report(row, checkpoint=checkpoint, algo="grpo")
    if writers is not None:
        for writer in writers:
            writer.close()


def run_grpo(config: GrpoConfig) -> dict:
    """Encode the prompts, start the rollout actors, train, plot; returns where the checkpoint and curves are."""
    config = with_absolute_paths(config)
    folder = config.run_folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config.model_dump_json(indent=2))
    texts = prompt_list(config.prompts, config.prompts_file)
    preset = read_metadata(config.init).get("preset", "qwen-image")
    encoded = ray.get(
        encode_sample_prompts.options(num_gpus=config.rollout_gpus).remote(preset, config.base_weights_dir, texts)
    )
    prompts = {**encoded, "embeds": [np.asarray(e) for e in encoded["embeds"]]}
    actors = make_rollout_actors(config, prompts)
    print(
        f"[grpo] {len(texts)} prompts, {config.num_rollout_actors} rollout actors, {config.num_workers} train "
        f"workers, {config.num_iterations} iterations of {config.prompts_per_iteration} x {config.group_size} images",
        flush=True,
    )
    try:
        result = fit(
            train_loop_per_worker,
            config,
            # The handles travel as an object reference: Ray Train's controller, which holds the loop config, would
            # otherwise import the actors' module (the model stack) to unpickle them.
            {"actors": ray.put(actors), "prompts": prompts},
            label="grpo",
            total_steps=config.num_iterations,
            keys=("reward_mean", "kl"),
        )
    finally:
        for actor in actors:
            ray.kill(actor)
    summary = {
        "checkpoint": str(export_folder(config, config.num_iterations, "grpo")),
        **adapter_summary(config, config.num_iterations, "grpo"),
        "metrics": str(folder / "train.csv"),
        "reward_curve": str(
            plot_curves(
                folder / "train.csv",
                folder / "reward_curve.png",
                ["reward_mean", *[spec.kind.rpartition(":")[2] for spec in config.rewards], "loss"]
                + (["kl"] if config.kl_beta else []),
                title="GRPO: mean rollout reward per iteration",
            )
        ),
        "eval_curve": str(
            plot_curves(folder / "eval.csv", folder / "eval_curve.png", ["reward"], title="ODE evaluation reward")
        ),
        "final": result.metrics,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
