"""GRPO on the nano model in one process: the same objective (``training.post_training.grpo``), SDE rollouts and
judge as ``jobs/rl.py --algo grpo``, without Ray, for sweeping a recipe quickly on a small machine.

    python benchmarks/grpo_in_process.py --start outputs/demo/pretrain/nano/exports/step0000750-s64 \
        [--iters 40] [--prompts 16] [--group 8] [--lr 1e-3] [--clip 2e-4] [--minibatches 2] [--cfg 4] \
        [--shape-margin 0] [--eval-prompts 48] [--kinds one | --prompts-file F]

Each iteration rolls out ``--group`` SDE samples of ``--prompts`` training-split prompts (drawn from
``--train-scenes`` scenes of ``pipelines.synth.shapes`` of ``--kinds``, or read from ``--prompts-file``, where a
prompt holding a held-out pair is an error; ``--train-on-held-out`` draws held-out-split scenes instead, on purpose:
a diagnostic of whether the reward can fix the evaluated prompts at all), scores them with the judge (the share of
attributes right, plus ``--shape-margin`` times the judge's shape margin), and trains LoRA adapters on the groups whose
rewards differ (dynamic sampling; the others have no advantage). Every ``--eval-every`` iterations the judge
scores ODE samples (20 steps, true CFG ``--eval-cfg``, the seed of prompt i is i, as ``benchmarks/learning.py``
judges RL) of ``--eval-prompts`` prompts of held-out colour-shape pairs and of 64 training prompts. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    from models.generation import TextToImage
    from models.lora import LoraSettings
    from models.prompt_embeds import PromptEmbeds, pad_prompt_embeds
    from pipelines.synth import shapes
    from training.evaluation import judge
    from training.post_training.grpo import GrpoSettings, RolloutBatch, group_advantages, grpo_update
    from training.post_training.policy import Policy
    from training.post_training.rollout import sde_rollout

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", required=True, help="an export of a nano pretraining run")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--prompts", type=int, default=16, help="prompts rolled out per iteration")
    parser.add_argument("--group", type=int, default=8, help="SDE samples per prompt")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=2e-4, help="clip range of the ratio")
    parser.add_argument("--kl", type=float, default=0.01, help="weight of the KL to the start")
    parser.add_argument("--minibatches", type=int, default=2, help="optimiser steps per iteration")
    parser.add_argument("--cfg", type=float, default=4.0, help="true CFG of the rollouts and the trained steps")
    parser.add_argument("--eval-cfg", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=10, help="SDE steps per rollout")
    parser.add_argument("--train-steps", type=int, default=4, help="of which each sample trains on")
    parser.add_argument("--noise", type=float, default=0.7)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha the same)")
    parser.add_argument(
        "--targets",
        default=",".join(LoraSettings().target_modules),
        help="LoRA's target modules, comma-separated (the default: the image stream's attention projections)",
    )
    parser.add_argument("--train-scenes", type=int, default=512, help="scenes the training prompts are drawn from")
    parser.add_argument("--sign", type=float, default=1.0, help="-1 negates the reward")
    parser.add_argument("--shape-margin", type=float, default=0.0, help="weight of the judge's shape margin")
    parser.add_argument("--eval-prompts", type=int, default=48, help="held-out prompts judged")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument(
        "--kinds", default="one", help="scene kinds of the training prompts, comma-separated (one, two)"
    )
    parser.add_argument("--prompts-file", help="training prompts, one per line (instead of --train-scenes scenes)")
    parser.add_argument(
        "--train-on-held-out",
        action="store_true",
        help="a diagnostic, not a result: train on held-out-pair prompts (other seeds than evaluated) to see whether "
        "the reward can fix those prompts at all",
    )
    args = parser.parse_args()
    if args.prompts_file and args.train_on_held_out:
        parser.error("--prompts-file and --train-on-held-out choose the training prompts two ways: give one")
    print(json.dumps(vars(args)), flush=True)

    torch.manual_seed(0)
    generator = TextToImage.from_checkpoint(args.start)
    held_out = [shapes.caption(s) for s in shapes.scenes(args.eval_prompts, seed=1, kinds=("one",), split="held_out")]
    if args.prompts_file:
        lines = pathlib.Path(args.prompts_file).read_text().splitlines()
        train = sorted({line.strip() for line in lines if line.strip()})
        held_pairs = [caption for caption in train if shapes.parse_caption(caption).held_out]
        if held_pairs:
            raise ValueError(f"{len(held_pairs)} training prompts hold a held-out pair, e.g. {held_pairs[0]!r}")
    else:
        split = "held_out" if args.train_on_held_out else "train"
        kinds = tuple(args.kinds.split(","))
        train = sorted({shapes.caption(s) for s in shapes.scenes(args.train_scenes, seed=11, kinds=kinds, split=split)})
    encoded = generator.encode(train)
    rows = [encoded.embeds[i][encoded.mask[i].bool()] for i in range(len(train))]
    negative = generator.encode([" "]) if args.cfg > 1 else None
    policy = Policy(
        args.start,
        lora=LoraSettings(rank=args.rank, alpha=args.rank, target_modules=args.targets.split(",")),
        need_reference=args.kl > 0,
    )
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=args.lr, weight_decay=0.0)
    settings = GrpoSettings(
        train_steps=args.train_steps,
        clip_range=args.clip,
        kl_beta=args.kl,
        noise_level=args.noise,
        true_cfg_scale=args.cfg,
        num_minibatches=args.minibatches,
    )
    generator.components.transformer = policy.transformer  # evaluation samples the policy

    def evaluate(iteration: int) -> dict:
        policy.model.eval()
        scores = {}
        for name, captions in (("held_out", held_out), ("train", train[:64])):
            images = generator(
                captions,
                height=64,
                width=64,
                num_steps=20,
                true_cfg_scale=args.eval_cfg,
                seeds=list(range(len(captions))),
            )
            scores[name] = round(judge.score(images, captions)["overall"], 3)
        policy.model.train()
        print(f"[grpo] iteration {iteration}: overall accuracy {json.dumps(scores)}", flush=True)
        return {"iteration": iteration, **scores}

    curve = [evaluate(0)]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for iteration in range(1, args.iters + 1):
        indices = rng.choice(len(train), args.prompts, replace=False)
        prompt = pad_prompt_embeds([rows[i] for i in indices]).repeat_interleave(args.group)
        policy.model.eval()
        trajectory = sde_rollout(
            policy.transformer,
            prompt,
            height=64,
            width=64,
            num_steps=args.steps,
            noise_level=args.noise,
            negative=negative,
            true_cfg_scale=args.cfg,
            generator=torch.Generator().manual_seed(1000 + iteration),
        )
        policy.model.train()
        captions = [train[i] for i in indices for _ in range(args.group)]
        images = generator.decode(trajectory.final)
        rewards = torch.tensor(
            [judge.reward(image, c, shape_margin=args.shape_margin) for image, c in zip(images, captions, strict=True)]
        )
        grouped = (rewards * args.sign).float().view(args.prompts, args.group)
        advantages = group_advantages(grouped).reshape(-1)
        keep = (grouped.std(dim=1) > 0).repeat_interleave(args.group).nonzero().squeeze(1)
        update = {}
        if len(keep):
            batch = RolloutBatch(
                latents=trajectory.latents[keep],
                old_log_probs=trajectory.log_probs[keep],
                advantages=advantages[keep],
                prompt=PromptEmbeds(prompt.embeds[keep], prompt.mask[keep]),
                sigmas=trajectory.sigmas,
                sigma_max=trajectory.sigma_max,
                negative=negative,
            )
            update = grpo_update(policy.model, optimizer, batch, settings, reference=policy.reference)
        print(
            f"[grpo] iteration {iteration}/{args.iters}: reward {float(rewards.mean()):.3f}, "
            f"{len(keep) // args.group}/{args.prompts} groups differ, kl {update.get('kl', 0.0):.4f}",
            flush=True,
        )
        if iteration % args.eval_every == 0 or iteration == args.iters:
            curve.append(evaluate(iteration))
    result = {
        "start_held_out_acc": curve[0]["held_out"],
        "final_held_out_acc": curve[-1]["held_out"],
        "held_out_delta": round(100 * (curve[-1]["held_out"] - curve[0]["held_out"]), 1),
        "start_train_acc": curve[0]["train"],
        "final_train_acc": curve[-1]["train"],
        "curve": curve,
        "minutes": round((time.perf_counter() - started) / 60, 2),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
