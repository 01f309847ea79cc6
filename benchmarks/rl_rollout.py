"""GRPO rollouts on Ray actors: images/s with 1 vs 2 rollout actors, and the time split of one GRPO iteration
between rollout (SDE sampling), reward (VAE decode + scoring) and update, on the tiny preset.

    python benchmarks/rl_rollout.py [--rounds 3] [--group-size 8] [--size 64] [--steps 10] [--reward mean_color]

Each actor is ``training.post_training.rollout.RolloutWorker`` (the one GRPO runs) with one CPU and one torch thread; a round
sends ``2 x actors`` rollout calls of one prompt x ``group_size`` images, spread over the actors, and times them
from the driver (actor start-up and a warm-up call not counted). The split comes from iterations with one actor,
where rollout and reward run one after the other: the actor reports its sampling and reward times, the update is
``training.post_training.grpo.grpo_update`` run in this process as a train worker runs it (one thread), and the weight push
is timed too. Last line: one JSON object with ``images_per_s_1_actor``, ``images_per_s_2_actors``, ``scaling``
and ``split`` (seconds per iteration and fractions). No fixed target.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from models.checkpoint import save_components  # noqa: E402
from models.presets import build_components  # noqa: E402
from training.post_training.grpo import GrpoSettings, RolloutBatch, group_advantages, grpo_update  # noqa: E402
from training.post_training.policy import Policy  # noqa: E402
from training.post_training.rollout import RolloutWorker, prompt_rows  # noqa: E402
from training.pretrain import encode_sample_prompts  # noqa: E402

PROMPTS = ["a red apple", "a blue sky", "a green field", "a yellow taxi"]


def start_actors(count: int, checkpoint: str, prompts: dict, settings: dict, reward: str) -> list:
    remote = ray.remote(RolloutWorker).options(num_cpus=1)
    actors = [
        remote.remote(checkpoint, None, None, [{"kind": reward}], prompts, settings, num_threads=1)
        for _ in range(count)
    ]
    ray.get([actor.rollout.remote([0], 2, 0) for actor in actors])  # warm-up: model load, first forward
    return actors


def images_per_s(actors: list, group_size: int, rounds: int) -> float:
    rates = []
    for round_index in range(rounds):
        calls = 2 * len(actors)
        started = time.perf_counter()
        ray.get(
            [
                actors[i % len(actors)].rollout.remote([i % len(PROMPTS)], group_size, round_index * 100 + i)
                for i in range(calls)
            ]
        )
        rates.append(calls * group_size / (time.perf_counter() - started))
    return statistics.median(rates)


def time_split(actor, checkpoint: str, prompts: dict, args) -> dict:
    """Seconds per iteration: push weights, rollout, reward, update (one actor: they run one after the other)."""
    torch.set_num_threads(1)
    policy = Policy(checkpoint, lora=None, need_reference=False)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)
    settings = GrpoSettings(train_steps=args.steps // 2, num_minibatches=2)
    rows = []
    for iteration in range(args.rounds + 1):
        started = time.perf_counter()
        ray.get(actor.set_weights.remote(ray.put(policy.trainable_state()), iteration))
        synced = time.perf_counter()
        results = ray.get([actor.rollout.remote([i], args.group_size, iteration * 10 + i) for i in range(2)])
        rewards = torch.as_tensor(np.concatenate([r["rewards"] for r in results]), dtype=torch.float32)
        batch = RolloutBatch(
            latents=torch.as_tensor(np.concatenate([r["latents"] for r in results])),
            old_log_probs=torch.as_tensor(np.concatenate([r["log_probs"] for r in results])),
            advantages=group_advantages(rewards.view(-1, args.group_size)).reshape(-1),
            prompt=prompt_rows(prompts["embeds"], [0, 1], args.group_size),
            sigmas=torch.as_tensor(results[0]["sigmas"]),
            sigma_max=float(results[0]["sigma_max"]),
        )
        updating = time.perf_counter()
        grpo_update(policy.transformer, optimizer, batch, settings, generator=torch.Generator().manual_seed(iteration))
        if iteration == 0:
            continue  # warm-up
        rows.append(
            {
                "sync_s": synced - started,
                "rollout_s": sum(r["rollout_s"] for r in results),
                "reward_s": sum(r["reward_s"] for r in results),
                "update_s": time.perf_counter() - updating,
            }
        )
    split = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    total = sum(split.values())
    return {**split, **{key.replace("_s", "_fraction"): value / total for key, value in split.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10, help="SDE sampling steps")
    parser.add_argument("--reward", default="mean_color", help="a registered reward (mean_color, ocr, clip...)")
    args = parser.parse_args()
    # Its own local Ray, even where another is running on this machine: the figures are for this machine alone.
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = str(
            save_components(pathlib.Path(folder) / "model", build_components("tiny", parts=("transformer",)))
        )
        encoded = ray.get(encode_sample_prompts.remote("tiny", None, PROMPTS))
        prompts = {**encoded, "embeds": [np.asarray(e) for e in encoded["embeds"]]}
        settings = {"height": args.size, "width": args.size, "num_steps": args.steps, "noise_level": 0.7}
        settings["true_cfg_scale"] = 1.0
        rates = {}
        for count in (1, 2):
            actors = start_actors(count, checkpoint, prompts, settings, args.reward)
            rates[count] = images_per_s(actors, args.group_size, args.rounds)
            print(f"{count} actor(s): {rates[count]:.1f} images/s", flush=True)
            if count == 1:
                split = time_split(actors[0], checkpoint, prompts, args)
                print(f"one iteration (2 prompts x {args.group_size}): {json.dumps(split)}", flush=True)
            for actor in actors:
                ray.kill(actor)
    ray.shutdown()
    result = {
        "preset": "tiny",
        "image_size": args.size,
        "sde_steps": args.steps,
        "group_size": args.group_size,
        "reward": args.reward,
        "cpu_cores": os.cpu_count(),
        "images_per_s_1_actor": round(rates[1], 2),
        "images_per_s_2_actors": round(rates[2], 2),
        "scaling": round(rates[2] / rates[1], 3),
        "split": {key: round(value, 4) for key, value in split.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
