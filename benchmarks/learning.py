"""Does the platform's chain produce a model that draws what it is asked? The demo's chain, measured.

    python benchmarks/learning.py [--output outputs/learning] [--prompts 48] [--rl-prompts 192] [--skip-rl]
                                  [--rl-start half] [--demo outputs/demo]

1. ``jobs/demo.py`` from scratch: scene corpus -> curation -> latent store -> nano pretraining -> evaluation;
   ``demo_minutes`` is its wall time (target: at most 10 on two cores; ``demo_cpu_steal``: the share of the CPU time
   a virtual machine's hypervisor took meanwhile, per part), and the judge's held-out accuracies of the
   trained and the untrained model come from its evaluation (``colour_acc``, ``untrained_colour_acc``, ...).
   ``--demo DIR`` reads a finished demo's report (``DIR/demo.json``, its times and scores) instead of running one.
2. ``vae_psnr``: the shipped nano VAE on 64 held-out scenes at 64 px.
3. RL from the demo's checkpoint, or with ``--rl-start half`` from its half-way export (``jobs/rl.py``): GRPO with
   the judge's reward (``configs/rl_grpo_nano.yaml``), the same with the reward negated, and DPO on judge-built
   pairs (``configs/rl_dpo_nano.yaml``). Each result and the start are judged on the same ``--rl-prompts`` prompts
   of held-out colour-shape pairs, which RL never sees (192 by default: one prompt is half a point, where the
   demo's 48 make it 2.1): ``grpo_delta``, ``negated_grpo_delta``, ``dpo_delta`` are differences in overall
   accuracy (all attributes right), in points.

The last line is one JSON object.
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
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def negated_rewards(config: pathlib.Path) -> str:
    """An override of ``config``'s rewards with every weight negated (options kept)."""
    import yaml

    rewards = yaml.safe_load(config.read_text())["rewards"]
    return "rewards=" + json.dumps([{**reward, "weight": -reward.get("weight", 1.0)} for reward in rewards])


def held_out_captions(num_prompts: int, seed: int = 1) -> list[str]:
    """``num_prompts`` one-object prompts of held-out colour-shape pairs (the same for every model judged)."""
    from pipelines.synth import shapes

    return [shapes.caption(scene) for scene in shapes.scenes(num_prompts, seed=seed, kinds=("one",), split="held_out")]


def draw_held_out(folder: str, captions: list[str]):
    """A checkpoint's images of ``captions``, sampled as the evaluation job samples them (20 steps, true CFG 4, the
    seed of prompt i is i)."""
    from models.generation import TextToImage

    generator = TextToImage.from_checkpoint(folder)
    return generator(captions, height=64, width=64, num_steps=20, true_cfg_scale=4.0, seeds=list(range(len(captions))))


def held_out_accuracy(folder: str, num_prompts: int, seed: int = 1) -> dict:
    """The judge's accuracies of a checkpoint on ``num_prompts`` held-out prompts (``held_out_captions``)."""
    from training.evaluation import judge

    captions = held_out_captions(num_prompts, seed)
    return judge.score(draw_held_out(folder, captions), captions)


def half_way_export(final: str) -> str:
    """The demo's export before its final one (``export_every`` in the pretraining recipe)."""
    exports = sorted(
        path for path in pathlib.Path(final).parent.iterdir() if path.is_dir() and path != pathlib.Path(final)
    )
    if not exports:
        raise FileNotFoundError(f"no export before {final}: the pretraining recipe sets no export_every")
    return str(exports[-1])


def shipped_vae_psnr() -> float:
    from models.presets import NANO_VAE_FOLDER, build_components
    from training.vae_finetune import reconstruction_scores
    from training.vae_train import VaeTrainConfig, reconstruct, scene_images

    trained = json.loads((NANO_VAE_FOLDER / "train_config.json").read_text())
    data = VaeTrainConfig.model_validate(trained).data.model_copy(update={"num_heldout_images": 64})
    heldout = scene_images(data, 0, heldout=True)
    vae = build_components("nano", parts=("vae",)).vae
    return float(reconstruction_scores(heldout, reconstruct(vae, heldout))["psnr"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/learning")
    parser.add_argument("--prompts", type=int, default=48, help="held-out prompts the demo judges per model")
    parser.add_argument("--rl-prompts", type=int, default=192, help="held-out prompts judged per RL model")
    parser.add_argument("--skip-rl", action="store_true", help="the demo and the VAE only")
    parser.add_argument(
        "--rl-start",
        choices=["final", "half"],
        default="final",
        help="RL starts from the demo's final model, or from its half-way export (configs/pretrain_nano.yaml)",
    )
    parser.add_argument(
        "--rl-runs",
        default="grpo,negated_grpo,dpo",
        help="comma-separated RL runs: grpo, negated_grpo, dpo (all three by default)",
    )
    parser.add_argument("--demo", help="a finished demo's output folder: its report instead of a new run")
    args = parser.parse_args()
    chosen = [name for name in args.rl_runs.split(",") if name]
    unknown = sorted(set(chosen) - {"grpo", "negated_grpo", "dpo"})
    if unknown:
        parser.error(f"--rl-runs: unknown {unknown}; choose from grpo, negated_grpo, dpo")
    output = pathlib.Path(args.output).resolve()

    if args.demo:
        report = json.loads((pathlib.Path(args.demo) / "demo.json").read_text())
    else:
        from jobs.demo import main as demo

        report = demo([f"output_dir={output / 'demo'}", f"num_prompts={args.prompts}"])
    trained, untrained = report["judge"]["trained"], report["judge"]["untrained"]
    result = {
        "demo_minutes": report["minutes"]["total"],
        "demo_minutes_per_part": report["minutes"],
        # The share of the machine's CPU time the hypervisor took during each part (models/host.py): read the
        # minutes with it. Absent from reports of demos run before it was recorded.
        "demo_cpu_steal": report.get("cpu_steal"),
        "vae_psnr": round(shipped_vae_psnr(), 2),
        "vae_resolution": 64,
        "held_out_prompts": trained["num_prompts"],
        "demo": str(pathlib.Path(args.demo).resolve()) if args.demo else str(output / "demo"),
    }
    for attribute in ("colour", "shape", "position", "count", "overall"):
        result[f"{attribute}_acc"] = round(trained[attribute], 3)
        result[f"untrained_{attribute}_acc"] = round(untrained[attribute], 3)
    print("[learning] " + json.dumps(result), flush=True)

    if not args.skip_rl:
        from jobs.rl import main as rl

        start = report["checkpoint"] if args.rl_start == "final" else half_way_export(report["checkpoint"])
        result["rl_start"] = args.rl_start
        before = held_out_accuracy(start, args.rl_prompts)
        result["rl_held_out_prompts"] = args.rl_prompts
        result["rl_start_overall_acc"] = round(before["overall"], 3)
        runs = {
            "grpo": ["--algo", "grpo", "--config", str(ROOT / "configs" / "rl_grpo_nano.yaml")],
            "negated_grpo": [
                "--algo",
                "grpo",
                "--config",
                str(ROOT / "configs" / "rl_grpo_nano.yaml"),
                "run_name=grpo-nano-negated",
                negated_rewards(ROOT / "configs" / "rl_grpo_nano.yaml"),
            ],
            "dpo": ["--algo", "dpo", "--config", str(ROOT / "configs" / "rl_dpo_nano.yaml")],
        }
        for name, argv in runs.items():
            if name not in chosen:
                continue
            started = time.perf_counter()
            extra = [f"init={start}", f"output_dir={output / 'rl'}"]
            if name == "dpo":
                extra.append(f"pairs_dir={output / 'rl' / 'dpo-nano-pairs'}")
            summary = rl(argv + extra)
            after = held_out_accuracy(summary["checkpoint"], args.rl_prompts)
            result[f"{name}_overall_acc"] = round(after["overall"], 3)
            result[f"{name}_delta"] = round(100 * (after["overall"] - before["overall"]), 1)
            result[f"{name}_minutes"] = round((time.perf_counter() - started) / 60, 2)
            result[f"{name}_curve"] = summary.get("reward_curve") or summary.get("loss_curve")
            print(f"[learning] {name}: " + json.dumps({k: v for k, v in result.items() if k.startswith(name)}))
    output.mkdir(parents=True, exist_ok=True)  # with --demo and --skip-rl nothing else has made it
    (output / "learning.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
