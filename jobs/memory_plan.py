"""Memory plan: per-GPU memory of training the transformer, for a config and a cluster shape, without allocating it.

    python jobs/memory_plan.py                                    # the published model, 8 x 80 GB, FSDP, 256/640/1328
    python jobs/memory_plan.py --gpus 64 --tensor-parallel 4 --activation-checkpointing 1 --batch 2
    python jobs/memory_plan.py --transformer-config my_model/transformer/config.json --gpu-gib 141

For each resolution it prints parameters, gradients, optimiser states, EMA, gathered blocks and activations per
sample (with and without activation checkpointing), the peak at ``--batch``, the largest batch per GPU that fits,
and the fewest GPUs on which one sample per GPU fits, with and without checkpointing. The counts come from the
model built on the meta device (``training/memory_plan.py`` says how, and which measurements check them). The last
line is the whole plan as JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.presets import QWEN_IMAGE_TRANSFORMER_CONFIG  # noqa: E402
from training.memory_plan import GIB, count_parameters, gpus_needed, plan_memory  # noqa: E402


def _gib(value: int) -> str:
    return f"{value / GIB:7.1f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transformer-config", help="a transformer/config.json (default: the published model)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 640, 1328])
    parser.add_argument("--text-tokens", type=int, default=256, help="prompt tokens per sample (at most 1024)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU, GiB")
    parser.add_argument("--strategy", choices=("fsdp", "ddp"), default="fsdp")
    parser.add_argument("--tensor-parallel", type=int, default=1)
    parser.add_argument("--replicate", type=int, default=1, help="HSDP replicas")
    parser.add_argument("--activation-checkpointing", type=int, default=0, help="0 none, n every n-th block")
    parser.add_argument("--cpu-offload", action="store_true")
    parser.add_argument("--ema", action="store_true")
    parser.add_argument("--batch", type=int, default=1, help="samples per GPU for the peak column")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="compute dtype")
    args = parser.parse_args(argv)
    config = (
        json.loads(pathlib.Path(args.transformer_config).read_text())
        if args.transformer_config
        else dict(QWEN_IMAGE_TRANSFORMER_CONFIG)
    )
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    gpu_bytes = int(args.gpu_gib * GIB)
    shape = {
        "strategy": args.strategy,
        "tensor_parallel": args.tensor_parallel,
        "replicate": args.replicate,
        "cpu_offload": args.cpu_offload,
        "ema": args.ema,
        "text_tokens": args.text_tokens,
        "compute_dtype": getattr(torch, args.dtype),
    }
    params = count_parameters(config)
    print(
        f"transformer: {params.total / 1e9:.3f}B parameters ({params.per_block / 1e6:.1f}M per block, "
        f"{config['num_layers']} blocks); {args.gpus} GPUs of {args.gpu_gib:g} GiB, {args.strategy}, "
        f"TP {args.tensor_parallel}, replicas {args.replicate}, activation checkpointing "
        f"{args.activation_checkpointing or 'off'}, {args.text_tokens} text tokens; GiB per GPU:"
    )
    header = (
        "  res   params    grads    optim      ema gathered  act/smp  act/smp(AC) peak@batch max_batch  GPUs  GPUs(AC)"
    )
    print(header)
    rows = []
    for resolution in args.resolutions:
        plan = plan_memory(
            config,
            resolution=resolution,
            world=args.gpus,
            batch_size=args.batch,
            activation_checkpointing=args.activation_checkpointing,
            **shape,
        )
        checkpointed = plan_memory(config, resolution=resolution, world=args.gpus, activation_checkpointing=1, **shape)
        need = gpus_needed(config, resolution=resolution, gpu_bytes=gpu_bytes, activation_checkpointing=0, **shape)
        need_ac = gpus_needed(config, resolution=resolution, gpu_bytes=gpu_bytes, activation_checkpointing=1, **shape)
        row = {
            **plan.as_dict(gpu_bytes),
            "activations_per_sample_checkpointing_every_block": checkpointed.activations_per_sample,
            "gpus_needed": need,
            "gpus_needed_with_checkpointing": need_ac,
        }
        rows.append(row)
        print(
            f"{resolution:5d} {_gib(plan.parameters)}  {_gib(plan.gradients)}  {_gib(plan.optimizer)}  "
            f"{_gib(plan.ema)}  {_gib(plan.gathered)}  {_gib(plan.activations_per_sample_no_checkpointing)}  "
            f"{_gib(checkpointed.activations_per_sample)}     {_gib(plan.peak)}  {row['max_batch']:8d}  "
            f"{need if need else 'none':>5}  {need_ac if need_ac else 'none':>7}"
        )
    print("(GPUs, GPUs(AC): the fewest GPUs on which one sample per GPU fits, without / with checkpointing)")
    result = {
        "parameters": params.total,
        "gpus": args.gpus,
        "gpu_gib": args.gpu_gib,
        "shape": {key: str(value) if key == "compute_dtype" else value for key, value in shape.items()},
        "phases": rows,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
