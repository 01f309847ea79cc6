"""VAE decoder fine-tuning job on text-rich images (docs/qwen_image.md §6), on Ray Train; the encoder stays frozen.

    python jobs/finetune_vae.py --config configs/finetune_vae_tiny.yaml
    python jobs/finetune_vae.py --config configs/finetune_vae_tiny.yaml --max-steps 6            # smoke run
    python jobs/finetune_vae.py preset=qwen-image weights_dir=/models/Qwen-Image use_gpu=true \\
        perceptual.kind=vgg perceptual.weights_path=/models/vgg16.safetensors

Connects to ``RAY_ADDRESS`` when set, else starts a local Ray. Prints the final checkpoint (diffusers layout: open it
with ``TextToImage.from_checkpoint`` or evaluate it with ``jobs/evaluate.py``), the held-out PSNR / SSIM before and
after, the reconstruction grid and the loss curve. Running it again with the same output resumes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.config import load_config  # noqa: E402
from models.ray_runtime import init_ray  # noqa: E402
from training.vae_finetune import VaeFinetuneConfig, run_finetune  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML with VaeFinetuneConfig keys (configs/finetune_vae_*.yaml)")
    parser.add_argument("--max-steps", type=int, help="smoke run: stop after this many steps")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for sections)")
    args = parser.parse_args(argv)
    config = load_config(VaeFinetuneConfig, args.config, args.overrides)
    if args.max_steps:
        steps = min(args.max_steps, config.num_steps)
        config = config.model_copy(update={"num_steps": steps, "checkpoint_every": min(config.checkpoint_every, steps)})
    init_ray()
    summary = run_finetune(config)
    print("[finetune_vae] done:\n" + json.dumps(summary, indent=2), flush=True)
    return summary


if __name__ == "__main__":
    main()
