"""The nano pretraining recipe in one process, judged on held-out prompts: how recipes are compared in minutes.

    python benchmarks/nano_pretrain_in_process.py --store outputs/demo/store [--recipe configs/pretrain_nano.yaml]
        [--steps 500] [--judge-at 250] [key=value ...]

The pretraining job's own step (``training.loop._train_step``: the recipe's loss, caption dropout to the empty
prompt's embedding, learning-rate schedule, gradient clipping) with its AdamW, on the store's rows read by the same
reader the Ray Train worker uses (``training.data.StoreStream``), without Ray: one process, two threads.
``key=value`` overrides any recipe key (``loss.logit_mean=0.8``); ``--steps`` replaces the phase's steps (the
schedule follows). At each ``--judge-at`` step and at the end, the model samples the demo evaluation's prompts and
seeds (``configs/evaluate_nano.yaml``: 48 prompts of held-out colour-shape pairs, 20 steps, true CFG 4, 64 px) and
the judge scores them. The model starts from the nano preset's
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


def main() -> None:
    from models.config import load_config
    from models.generation import TextToImage
    from store import columns as C
    from training.config import PretrainConfig
    from training.data import StoreStream
    from training.evaluation import judge
    from training.evaluation.config import EvaluateConfig
    from training.evaluation.run import prompt_rows
    from training.evaluation.text_accuracy import SCENES
    from training.loop import TrainState, _train_step
    from training.optim import adamw
    from training.parallel import Parallel, ParallelConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a latent store the scene producers filled (64 px)")
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "pretrain_nano.yaml"))
    parser.add_argument("--evaluation", default=str(ROOT / "configs" / "evaluate_nano.yaml"))
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
    parallel = Parallel(ParallelConfig(), torch.device("cpu"), world=1, rank=0)
    stream = StoreStream(
        config.store_dir,
        phase,
        seed=config.seed,
        rank=0,
        world=1,
        batch_size=config.batch_size,
        shuffle_buffer=config.shuffle_buffer,
    )
    evaluation = load_config(EvaluateConfig, args.evaluation, [])
    rows = [row for row in prompt_rows(evaluation) if row[C.EVAL_TASK] == SCENES]
    held_out = [row[C.EVAL_PROMPT] for row in rows]
    state, judged, train_seconds = TrainState(), {}, 0.0
    while state.step < steps:
        for batch in stream.batches(state.epoch):
            started = time.perf_counter()
            loss, _ = _train_step(model, optimizer, [batch], state, config, phase.lr_scale, parallel, empty)
            train_seconds += time.perf_counter() - started
            if state.step % 50 == 0:
                print(f"[pretrain] step {state.step}/{steps} loss {loss:.4f}", flush=True)
            if state.step in judged_steps:
                model.eval()
                with torch.no_grad():
                    images = generator(
                        held_out,
                        height=evaluation.scenes.resolution,
                        width=evaluation.scenes.resolution,
                        num_steps=evaluation.generation.num_steps,
                        true_cfg_scale=evaluation.generation.true_cfg_scale,
                        seeds=[row[C.EVAL_SEED] for row in rows],
                    )
                model.train()
                scores = judge.score(images, held_out)
                judged[state.step] = {
                    name: round(scores[name], 3) for name in ("colour", "shape", "position", "count", "overall")
                }
                print(f"[judge] step {state.step}: {json.dumps(judged[state.step])}", flush=True)
            if state.step >= steps:
                break
        state.epoch += 1
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
