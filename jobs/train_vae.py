"""Train a VAE from scratch (encoder and decoder) on shape scenes, on Ray Train: how the nano VAE is made.

    python jobs/train_vae.py --config configs/train_vae_nano.yaml                    # the shipped nano VAE's run
    python jobs/train_vae.py --config configs/train_vae_nano.yaml --max-steps 100    # smoke run
    python jobs/train_vae.py --config configs/train_vae_nano.yaml --ship             # and replace the shipped weights

Connects to ``RAY_ADDRESS`` when set, else starts a local Ray. Prints the exported VAE (diffusers layout), held-out
PSNR / SSIM of the untrained and the trained VAE, the reconstruction grid and the curve (loss and held-out PSNR).
Running it again with the same output resumes. ``--ship`` writes the result to ``models/weights/nano_vae`` (float16
weights, the config, and the run's config, summary and curve), which ``build_components("nano")`` loads.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.config import load_config  # noqa: E402
from models.ray_runtime import init_ray  # noqa: E402
from training.vae_train import VaeTrainConfig, run_training, ship  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML with VaeTrainConfig keys (configs/train_vae_nano.yaml)")
    parser.add_argument("--max-steps", type=int, help="smoke run: stop after this many steps")
    parser.add_argument("--ship", action="store_true", help="write the trained VAE to models/weights/nano_vae")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for sections)")
    args = parser.parse_args(argv)
    config = load_config(VaeTrainConfig, args.config, args.overrides)
    if args.max_steps:
        steps = min(args.max_steps, config.num_steps)
        config = config.model_copy(update={"num_steps": steps, "checkpoint_every": min(config.checkpoint_every, steps)})
    init_ray()
    summary = run_training(config)
    if args.ship:
        summary["shipped"] = str(ship(summary, config))
    print("[train_vae] done:\n" + json.dumps(summary, indent=2), flush=True)
    return summary


if __name__ == "__main__":
    main()
