"""LoRA against full fine-tuning: trainable parameters, peak memory and samples/s on a mid-size model on CPU; the
memory plan of LoRA on the published model at 1328 px; and (on a GPU) peak memory and step time of LoRA on
real-width blocks.

    python benchmarks/lora_memory.py                      # CPU part and the plan (about a minute on 2 cores)
    python benchmarks/lora_memory.py --steps 10 --resolution 384
    python benchmarks/lora_memory.py --gpu-out OUT        # also the GPU part when CUDA is present, JSON copied to OUT

CPU part: the mid-size transformer (4 blocks at hidden 512, 38M parameters) trained with LoRA (rank ``--rank``,
alpha = rank, the default attention targets ``to_q, to_k, to_v, to_out.0``; the base frozen) and with every
weight trained, each in a fresh process (so that the two do not share a high-water mark) on one thread. The model
is built as the training loop builds it (on the meta device, ``add_lora``, the frozen base cast to its dtype, then
materialised, random base weights drawn in place, ``init_lora_``) and stepped with the loop's own ``_train_step``
(flow-matching loss, gradient clipping, AdamW over ``trainable_parameters``) on fixed random batches of
``--batch`` latents at ``--resolution`` px with ``--text-tokens`` prompt embeddings; ``--steps`` steps are timed
after ``--warmup``. Peak memory is the process's peak resident set (``ru_maxrss``) and its rise from just before
the model is built (``peak_rss_delta_mb``: weights, optimiser states, activations), next to the memory plan's peak
for the same setting (full: ``plan_memory``; LoRA: ``plan_lora_memory``, fp32 and no sharding as on CPU); the
resident set also holds what the allocator keeps after freeing and the backward pass's transient gradients, which
the plan does not count.

Plan: ``training.memory_plan.plan_lora_memory`` for the published transformer (20.4B parameters) at 1328 px (6,889
image tokens) with 256 prompt tokens, batch 1, on one GPU with every block checkpointed, the base in bf16 (what the
loop stores under FSDP) or quantised weight-only to int8 (float8 takes the same bytes): base weights, adapter
states (fp32 weights, gradients and two AdamW moments), workspace (gathered blocks, or one dequantised weight),
activations kept to the backward pass, the block rebuilt in it, the peak, and which of the GPU sizes it fits with
10% of the GPU left to the allocator. The plan covers the transformer only: the condition encoder and the VAE never
run in training (latents and prompt embeddings are read from the store). For contrast, the plan's peak without
checkpointing and that of full fine-tuning on one GPU.

GPU part (only with CUDA): LoRA on ``--gpu-blocks`` real-width blocks (hidden 3072, 24 heads of 128, text width
3584) at 1328 px, batch 1, every block checkpointed, the base in bf16 under FSDP2 on one GPU (as the loop runs it),
random weights drawn on the GPU; per block count the step time, the measured peak
(``torch.cuda.max_memory_allocated``) and the plan's, and the measured peak extrapolated to the published 60
blocks from the two smallest counts (the peak grows linearly with the blocks).

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import resource
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.presets import MID_TRANSFORMER_CONFIG, QWEN_IMAGE_TRANSFORMER_CONFIG  # noqa: E402
from store import columns as C  # noqa: E402

GPU_SIZES_GIB = (24, 40, 48, 80, 141)
MB = 2**20


def _log(message: str) -> None:
    print(f"[lora_memory] {message}", file=sys.stderr, flush=True)


def _lora_settings(rank: int):
    from models.lora import LoraSettings

    return LoraSettings(rank=rank, alpha=float(rank))  # the default targets: to_q, to_k, to_v, to_out.0


def _loop_config(steps: int, resolution: int):
    """A pretraining config for ``_train_step``: constant learning rate, the loop's loss and gradient clipping."""
    from training.config import PretrainConfig

    return PretrainConfig.model_validate(
        {
            "store_dir": "unused",
            "optim": {"lr": 1e-4, "warmup_steps": 0, "weight_decay": 0.0},
            "phases": [{"name": "bench", "num_steps": steps, "resolution": resolution}],
        }
    )


def build(config: dict, parallel, lora, *, compute: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """The transformer as ``training.loop.build_model`` builds it (meta device, adapters added and the frozen base
    cast before anything is allocated, parallelised and materialised, only the adapters trainable with LoRA), with
    random base weights drawn in place instead of read from a folder."""
    from models.lora import add_lora, init_lora_
    from training.parallel import (
        build_meta_transformer,
        cast_frozen_,
        frozen_weights_dtype,
        init_random_,
        parallelize,
        unwrap,
    )

    model = build_meta_transformer(config)
    if lora is not None:
        add_lora(model, lora)
        cast_frozen_(model, frozen_weights_dtype("auto", parallel.config.strategy, compute))
    model = parallelize(model, parallel, param_dtype=compute)
    init_random_(unwrap(model), seed)
    model.train()
    if lora is None:
        unwrap(model).requires_grad_(True)
    else:
        init_lora_(unwrap(model), seed)
    return model


def _batches(config: dict, count: int, batch: int, resolution: int, text_tokens: int, device) -> list[dict]:
    """Fixed random batches as the store gives them: latents and prompt embeddings with their mask."""
    generator = torch.Generator().manual_seed(0)
    side = resolution // 8
    return [
        {
            C.LATENTS: torch.randn(batch, 16, side, side, generator=generator).to(device),
            C.TEXT_EMBEDS: torch.randn(batch, text_tokens, config["joint_attention_dim"], generator=generator).to(
                device
            ),
            C.TEXT_MASK: torch.ones(batch, text_tokens, dtype=torch.long, device=device),
        }
        for _ in range(count)
    ]


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _cpu_mode(mode: str, args: dict, out: str) -> None:
    """One mode in its own process: build, warm up, time; write the figures to ``out``."""
    from training.loop import TrainState, _train_step, trainable_parameters
    from training.post_training.policy import single_process

    torch.set_num_threads(args["threads"])
    config = _loop_config(args["warmup"] + args["steps"], args["resolution"])
    parallel = single_process()
    batches = _batches(MID_TRANSFORMER_CONFIG, 2, args["batch"], args["resolution"], args["text_tokens"], "cpu")
    before = _max_rss()  # the interpreter, torch, diffusers, peft and the batches
    lora = _lora_settings(args["rank"]) if mode == "lora" else None
    model = build(MID_TRANSFORMER_CONFIG, parallel, lora, compute=torch.float32)
    trainable = trainable_parameters(model)
    optimizer = torch.optim.AdamW(trainable, lr=config.optim.lr, weight_decay=0.0)
    state = TrainState()
    for index in range(args["warmup"]):
        _train_step(model, optimizer, [batches[index % 2]], state, config, 1.0, parallel)
    started = time.perf_counter()
    for index in range(args["steps"]):
        _train_step(model, optimizer, [batches[index % 2]], state, config, 1.0, parallel)
    seconds = time.perf_counter() - started
    result = {
        "trainable_params": sum(param.numel() for param in trainable),
        "total_params": sum(param.numel() for param in model.parameters()),
        "step_s": seconds / args["steps"],
        "samples_per_s": args["batch"] * args["steps"] / seconds,
        "peak_rss": _max_rss(),
        "rss_before_model": before,
    }
    pathlib.Path(out).write_text(json.dumps(result))


def cpu_part(args: argparse.Namespace) -> dict:
    from training.memory_plan import plan_lora_memory, plan_memory

    settings = {
        key: getattr(args, key) for key in ("steps", "warmup", "batch", "resolution", "text_tokens", "rank", "threads")
    }
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: its own high-water mark
    shape = dict(resolution=args.resolution, batch_size=args.batch, text_tokens=args.text_tokens)
    plans = {
        "lora": plan_lora_memory(
            MID_TRANSFORMER_CONFIG,
            lora=_lora_settings(args.rank),
            base_dtype="float32",
            strategy="ddp",
            activation_checkpointing=0,
            compute_dtype=torch.float32,
            **shape,
        ).peak,
        "full": plan_memory(MID_TRANSFORMER_CONFIG, world=1, strategy="ddp", compute_dtype=torch.float32, **shape).peak,
    }
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode in ("lora", "full"):
            out = str(pathlib.Path(folder) / f"{mode}.json")
            process = context.Process(target=_cpu_mode, args=(mode, settings, out))
            process.start()
            process.join()
            if process.exitcode:
                raise RuntimeError(f"the {mode} process failed (exit code {process.exitcode})")
            measured = json.loads(pathlib.Path(out).read_text())
            result[mode] = {
                "trainable_params": measured["trainable_params"],
                "total_params": measured["total_params"],
                "samples_per_s": round(measured["samples_per_s"], 3),
                "step_s": round(measured["step_s"], 3),
                "peak_rss_mb": round(measured["peak_rss"] / MB, 1),
                "peak_rss_delta_mb": round((measured["peak_rss"] - measured["rss_before_model"]) / MB, 1),
                "plan_peak_mb": round(plans[mode] / MB, 1),
            }
            _log(f"cpu {mode}: {result[mode]}")
    lora, full = result["lora"], result["full"]
    tokens = args.batch * ((args.resolution // 16) ** 2 + args.text_tokens)
    return {
        "cpu_model": f"4 blocks, hidden 512 ({full['total_params'] / 1e6:.0f}M parameters), {args.resolution} px, "
        f"batch {args.batch}, {args.text_tokens} text tokens ({tokens} tokens per step), fp32, "
        f"{args.threads} thread(s), LoRA rank {args.rank} on to_q,to_k,to_v,to_out.0",
        "cpu_lora": lora,
        "cpu_full": full,
        "cpu_trainable_fraction": round(lora["trainable_params"] / full["trainable_params"], 5),
        "cpu_peak_delta_ratio": round(lora["peak_rss_delta_mb"] / full["peak_rss_delta_mb"], 3),
        "cpu_sps_ratio": round(lora["samples_per_s"] / full["samples_per_s"], 3),
    }


def _gib(value: int) -> float:
    return round(value / 2**30, 2)


def plan_part(rank: int, resolution: int = 1328, text_tokens: int = 256) -> dict:
    """The plan of LoRA on the published transformer, one GPU, every block checkpointed."""
    from training.memory_plan import GIB, plan_lora_memory, plan_memory

    config = dict(QWEN_IMAGE_TRANSFORMER_CONFIG)
    lora = _lora_settings(rank)
    shape = dict(resolution=resolution, text_tokens=text_tokens, lora=lora)
    result = {
        "plan_setting": f"published transformer ({config['num_layers']} blocks), {resolution} px "
        f"({(resolution // 16) ** 2} image tokens), {text_tokens} text tokens, batch 1, one GPU, every block "
        f"checkpointed, LoRA rank {rank} on to_q,to_k,to_v,to_out.0; the transformer only (latents and prompt "
        "embeddings come from the store); fits = peak within 90% of the GPU",
    }
    for base in ("bfloat16", "int8"):
        plan = plan_lora_memory(config, base_dtype=base, **shape)
        plain = plan_lora_memory(config, base_dtype=base, activation_checkpointing=0, **shape)
        result.setdefault("plan_base_params", plan.base_parameter_count)
        result.setdefault("plan_lora_params", plan.lora_parameter_count)
        result[f"plan_{base}"] = {
            "base_weights_gib": _gib(plan.base_weights),
            "lora_states_gib": _gib(plan.lora_states),
            "workspace_gib": _gib(plan.workspace),
            "activations_gib": _gib(plan.activations_per_sample),
            "recompute_gib": _gib(plan.recompute_per_sample),
            "peak_gib": _gib(plan.peak),
            "fits_gib": [size for size in GPU_SIZES_GIB if plan.fits(size * GIB)],
            "max_batch": {str(size): plan.max_batch(size * GIB) for size in GPU_SIZES_GIB},
            "peak_without_checkpointing_gib": _gib(plain.peak),
            "fits_without_checkpointing_gib": [size for size in GPU_SIZES_GIB if plain.fits(size * GIB)],
        }
        _log(f"plan {base}: {result[f'plan_{base}']}")
    full = plan_memory(config, resolution=resolution, world=1, text_tokens=text_tokens, activation_checkpointing=1)
    result["plan_full_finetune_one_gpu_peak_gib"] = _gib(full.peak)
    result["plan_fits_80gb_with_checkpointing"] = 80 in result["plan_bfloat16"]["fits_gib"]
    return result


def gpu_part(args: argparse.Namespace, *, device: torch.device | None = None, overrides: dict | None = None) -> dict:
    """LoRA on real-width blocks under FSDP2 on one device: CUDA's first, or ``device`` with the real-width
    config changed by ``overrides`` (a narrow model on the CPU, to try this code without a GPU)."""
    import torch.distributed as dist

    from training.loop import TrainState, _train_step, trainable_parameters
    from training.memory_plan import plan_lora_memory
    from training.parallel import ParallelConfig, build_mesh

    device = device or torch.device("cuda", 0)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29563")
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    compute = torch.bfloat16
    lora = _lora_settings(args.rank)
    runs = []
    try:
        parallel = build_mesh(ParallelConfig(strategy="fsdp", activation_checkpointing=1), device, 1, 0)
        loop_config = _loop_config(args.gpu_steps + 2, args.gpu_resolution)
        for blocks in args.gpu_blocks:
            config = {**QWEN_IMAGE_TRANSFORMER_CONFIG, **(overrides or {}), "num_layers": blocks}
            model = build(config, parallel, lora, compute=compute)
            optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-4, weight_decay=0.0, fused=cuda)
            batches = _batches(config, 2, 1, args.gpu_resolution, args.gpu_text_tokens, device)
            state = TrainState()
            times = []
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            for index in range(args.gpu_steps + 2):  # two warm-up steps
                if cuda:
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
                _train_step(model, optimizer, [batches[index % 2]], state, loop_config, 1.0, parallel)
                if cuda:
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - started)
            plan = plan_lora_memory(
                config,
                resolution=args.gpu_resolution,
                text_tokens=args.gpu_text_tokens,
                lora=lora,
                base_dtype="bfloat16",
                compute_dtype=compute,
            )
            measured = torch.cuda.max_memory_allocated(device) if cuda else 0
            run = {
                "blocks": blocks,
                "step_s": round(sum(times[2:]) / len(times[2:]), 4),
                "peak_gib": _gib(measured),
                "plan_peak_gib": _gib(plan.peak),
                "plan_vs_measured": round(plan.peak / measured, 3) if measured else None,
            }
            _log(f"gpu {run}")
            runs.append(run)
            del model, optimizer, batches
            if cuda:
                torch.cuda.empty_cache()
    finally:
        dist.destroy_process_group()
    result = {
        "gpu": torch.cuda.get_device_name(device) if cuda else str(device),
        "gpu_memory_gib": _gib(torch.cuda.get_device_properties(device).total_memory) if cuda else None,
        "gpu_setting": f"LoRA rank {args.rank}, bf16 base under FSDP2 on one GPU, {args.gpu_resolution} px, batch 1, "
        f"{args.gpu_text_tokens} text tokens, every block checkpointed, random weights",
        "gpu_runs": runs,
    }
    if len(runs) >= 2 and runs[0]["peak_gib"]:
        # The peak is linear in the blocks (each adds its weights and its kept inputs): extrapolate to the published
        # depth from the two smallest counts.
        small, large = sorted(runs, key=lambda run: run["blocks"])[:2]
        slope = (large["peak_gib"] - small["peak_gib"]) / (large["blocks"] - small["blocks"])
        depth = QWEN_IMAGE_TRANSFORMER_CONFIG["num_layers"]
        result["gpu_peak_extrapolated_60_blocks_gib"] = round(large["peak_gib"] + slope * (depth - large["blocks"]), 2)
        step = (large["step_s"] - small["step_s"]) / (large["blocks"] - small["blocks"])
        result["gpu_step_s_extrapolated_60_blocks"] = round(large["step_s"] + step * (depth - large["blocks"]), 3)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank)")
    parser.add_argument("--steps", type=int, default=5, help="CPU part: timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="CPU part: untimed steps first")
    parser.add_argument("--batch", type=int, default=2, help="CPU part: samples per step")
    parser.add_argument("--resolution", type=int, default=256, help="CPU part: image side in pixels")
    parser.add_argument("--text-tokens", type=int, default=32, help="CPU part: prompt tokens per sample")
    parser.add_argument("--threads", type=int, default=1, help="CPU part: torch threads per process")
    parser.add_argument("--skip-cpu", action="store_true", help="only the plan (and the GPU part)")
    parser.add_argument("--gpu-blocks", type=int, nargs="+", default=[2, 4], help="GPU part: block counts to run")
    parser.add_argument("--gpu-steps", type=int, default=5, help="GPU part: timed steps per block count")
    parser.add_argument("--gpu-resolution", type=int, default=1328)
    parser.add_argument("--gpu-text-tokens", type=int, default=256)
    parser.add_argument("--gpu-out", help="also write the JSON here (a device run's $OUT)")
    args = parser.parse_args(argv)
    result = {} if args.skip_cpu else cpu_part(args)
    result.update(plan_part(args.rank))
    if torch.cuda.is_available():
        result.update(gpu_part(args))
    else:
        result["gpu"] = None
        result["gpu_reason"] = "no CUDA device: the GPU part (LoRA on real-width blocks in bf16) did not run"
    if args.gpu_out:
        pathlib.Path(args.gpu_out).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(args.gpu_out) / "lora_memory.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
