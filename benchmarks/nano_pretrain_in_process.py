"""The nano pretraining recipe in one process, judged on held-out prompts: how recipes are compared in minutes.

    python benchmarks/nano_pretrain_in_process.py --store outputs/demo/store [--recipe configs/pretrain_nano.yaml]
        [--steps 500] [--judge-at 250] [key=value ...]

The recipe's loss (flow matching with its sigma sampling, caption dropout to the empty prompt's embedding), batch,
AdamW, learning-rate schedule and gradient clipping, on the store's rows read by the same reader the Ray Train
worker uses (``training.data.StoreStream``), without Ray: one process, two threads. ``key=value`` overrides any
recipe key (``loss.logit_mean=0.8``); ``--steps`` replaces the phase's steps (the schedule follows). At each
``--judge-at`` step and at the end, the model samples 48 prompts of held-out colour-shape pairs as the demo's
evaluation does (20 steps, true CFG 4, 64 px) and the judge scores them. The model starts from the nano preset's
seeded random weights, as the demo's does. Last line: one JSON object with the recipe's changes, seconds per step
and the judge's accuracies per judged step.
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

import torch  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
HELD_OUT_PROMPTS = 48


def main() -> None:
    from models.config import load_config
    from models.flow_matching import flow_matching_loss
    from models.generation import TextToImage
    from models.prompt_embeds import PromptEmbeds
    from pipelines.synth import shapes
    from store import columns as C
    from training.config import PretrainConfig
    from training.data import StoreStream
    from training.evaluation import judge
    from training.loop import drop_captions, phase_learning_rate
    from training.optim import adamw
    from training.schedule import set_learning_rate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a latent store the scene producers filled (64 px)")
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "pretrain_nano.yaml"))
    parser.add_argument("--steps", type=int, help="the phase's steps (default: the recipe's)")
    parser.add_argument("--judge-at", default="", help="comma-separated steps judged before the end")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="recipe key=value overrides")
    args = parser.parse_args()
    overrides = [f"store_dir={args.store}", *args.overrides]
    config = load_config(PretrainConfig, args.recipe, overrides)
    if len(config.phases) != 1:
        raise SystemExit(f"{args.recipe}: one phase expected, found {len(config.phases)}")
    if args.steps:
        phase = config.phases[0].model_copy(update={"num_steps": args.steps})
        config = config.model_copy(update={"phases": [phase]})
    phase, steps = config.phases[0], config.total_steps
    judged_steps = {int(step) for step in args.judge_at.split(",") if step} | {steps}
    torch.set_num_threads(args.threads)
    torch.manual_seed(config.seed)

    generator = TextToImage.from_preset(config.preset)
    model = generator.components.transformer.train().requires_grad_(True)
    empty = generator.encode([" "]).unpadded()[0].float()  # what a dropped caption becomes, as in the job
    optimizer = adamw(model.parameters(), config.optim)
    stream = StoreStream(
        config.store_dir,
        phase,
        seed=config.seed,
        rank=0,
        world=1,
        batch_size=config.batch_size,
        shuffle_buffer=config.shuffle_buffer,
    )
    held_out = [
        shapes.caption(scene) for scene in shapes.scenes(HELD_OUT_PROMPTS, seed=1, kinds=("one",), split="held_out")
    ]
    loss_config = config.loss
    judged, step, epoch, train_seconds = {}, 0, 0, 0.0
    while step < steps:
        for batch in stream.batches(epoch):
            started = time.perf_counter()
            set_learning_rate(optimizer, phase_learning_rate(step, config, phase.lr_scale))
            optimizer.zero_grad(set_to_none=True)
            draws = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 97)
            prompt = PromptEmbeds(batch[C.TEXT_EMBEDS].float(), batch[C.TEXT_MASK])
            if loss_config.caption_dropout:
                prompt, _ = drop_captions(prompt, empty, loss_config.caption_dropout, draws)
            out = flow_matching_loss(
                model,
                batch[C.LATENTS].float(),
                prompt,
                sigma_sampling=loss_config.sigma_sampling,
                logit_mean=loss_config.logit_mean,
                logit_std=loss_config.logit_std,
                weighting=loss_config.weighting,
                generator=draws,
            )
            out.loss.backward()
            if config.optim.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            optimizer.step()
            step += 1
            train_seconds += time.perf_counter() - started
            if step % 50 == 0:
                print(f"[pretrain] step {step}/{steps} loss {out.loss.item():.4f}", flush=True)
            if step in judged_steps:
                model.eval()
                with torch.no_grad():
                    images = generator(
                        held_out, height=64, width=64, num_steps=20, true_cfg_scale=4.0, seeds=list(range(48))
                    )
                model.train()
                scores = judge.score(images, held_out)
                judged[step] = {
                    name: round(scores[name], 3) for name in ("colour", "shape", "position", "count", "overall")
                }
                print(f"[judge] step {step}: {json.dumps(judged[step])}", flush=True)
            if step >= steps:
                break
        epoch += 1
    result = {
        "recipe": pathlib.Path(args.recipe).name,
        "overrides": args.overrides,
        "steps": steps,
        "samples": steps * config.batch_size,
        "s_per_step": round(train_seconds / steps, 4),
        "judged": judged,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
