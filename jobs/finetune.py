"""Fine-tune a model on your own images in one job: curation -> latent store -> LoRA training -> adapter and grids.

    python jobs/finetune.py --config configs/lora_tiny.yaml --sample 12        # built-in images, tiny model (smoke)
    python jobs/finetune.py --config configs/lora_qwen_image.yaml \\
        'images=[{path: /data/my_dog, caption_prefix: "sks dog, ", repeats: 2}]' init=/models/Qwen-Image
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/finetune.py --config configs/lora_qwen_image.yaml init=/models/Qwen-Image use_gpu=true

Each image folder holds images with sidecar ``.txt`` captions, or a JSONL manifest (``manifest``). Prints where the
adapter (``pytorch_lora_weights.safetensors``, diffusers' format: ``QwenImagePipeline.load_lora_weights`` reads it,
``jobs/serve.py --adapter NAME=PATH`` serves it), the sample grids, the loss curve and the funnel report are.
Running it again with the same ``output_dir`` and ``run_name`` resumes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.config import load_config  # noqa: E402
from models.ray_runtime import init_ray  # noqa: E402
from training.finetune import FinetuneConfig, run_finetune  # noqa: E402


def write_sample_images(folder: pathlib.Path, count: int) -> pathlib.Path:
    """``count`` images of the built-in synthetic corpus with sidecar captions (defects included, as real folders
    have them), for a first run without data of your own."""
    from pipelines.synth.sample_corpus import sample_pairs

    folder.mkdir(parents=True, exist_ok=True)
    for key, data, caption in sample_pairs(count, seed=5):
        (folder / f"{key}.jpg").write_bytes(data)
        (folder / f"{key}.txt").write_text(caption, encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe with FinetuneConfig keys (configs/lora_*.yaml)")
    parser.add_argument("--sample", type=int, metavar="N", help="train on N built-in sample images (replaces images)")
    parser.add_argument("--max-steps", type=int, help="smoke run: stop after this many steps")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for sections)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.sample:
        probe = load_config(FinetuneConfig, args.config, overrides)
        folder = write_sample_images(probe.run_folder / "sample_images", args.sample)
        overrides.append(f"images={json.dumps([{'path': str(folder), 'caption_prefix': 'sks, '}])}")
    config = load_config(FinetuneConfig, args.config, overrides)
    if args.max_steps:
        config = config.model_copy(update={"num_steps": min(config.num_steps, args.max_steps)})
    init_ray()
    summary = run_finetune(config)
    print("[finetune] done:\n" + json.dumps(summary, indent=2), flush=True)
    return summary


if __name__ == "__main__":
    main()
