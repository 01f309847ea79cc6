"""Training at scale: what FSDP2 and activation checkpointing cost, and (on a GPU) MFU and peak memory of
real-width blocks against the memory plan.

    python benchmarks/train_scale.py                 # CPU: 2 gloo processes, a mid-size model, 512 px, batch 4
    python benchmarks/train_scale.py --batch 2 --resolution 256   # fewer tokens per step: communication weighs more
    python benchmarks/train_scale.py --gpu-out OUT   # also the GPU part when CUDA is present, JSON copied to OUT

CPU part: two processes (one thread each) train the same mid-size transformer (4 blocks at hidden 512) on the same
batches with DDP, with FSDP2 (the default: each block's parameters gathered again for the backward pass), with FSDP2
keeping them gathered to the backward (``parallel.reshard_after_forward=false``), and with FSDP2 plus activation
checkpointing of every block; each is timed over ``--steps`` steps after two warm-up steps, ``--batch`` samples
per worker at ``--resolution`` (the tokens per step set how much compute each collective is set against).
``fsdp_vs_ddp`` is FSDP's samples/s over DDP's (target >= 0.85), ``ac_overhead`` the extra step time that
checkpointing costs (recomputing each block's forward). On gloo every collective is a copy through the loopback on the same two cores
that compute, so communication costs far more here than over NVLink.

GPU part (only with CUDA): real-width blocks (hidden 3072, 24 heads of 128, the published block) in bf16 under FSDP2
on one GPU, at 1328 px with every block checkpointed and at 256 px without, as many blocks as the memory plan fits
in 85% of the GPU. Reported per setting: step time, model FLOPs utilisation (``mfu``: 6 x parameters x tokens plus
attention, forward and backward, recomputation not counted, over the GPU's dense bf16 peak), the measured peak
(``torch.cuda.max_memory_allocated``) and the plan's. Weights are random, drawn on the GPU.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.presets import MID_TRANSFORMER_CONFIG, QWEN_IMAGE_TRANSFORMER_CONFIG  # noqa: E402

# Dense bf16 tensor-core peaks (no sparsity), by device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


def _batch(config: dict, batch: int, resolution: int, text_tokens: int, seed: int, device, dtype=torch.float32):
    from models.prompt_embeds import PromptEmbeds

    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 16, resolution // 8, resolution // 8, generator=generator)
    embeds = torch.randn(batch, text_tokens, config["joint_attention_dim"], generator=generator)
    mask = torch.ones(batch, text_tokens, dtype=torch.long)
    return latents.to(device, dtype), PromptEmbeds(embeds.to(device, dtype), mask.to(device))


def _train(model, optimizer, batches, device) -> list[float]:
    """Seconds per step, each step synchronised."""
    from models.flow_matching import flow_matching_loss
    from training.parallel import clip_grad_norm_

    times = []
    for index, (latents, prompt) in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        generator = torch.Generator().manual_seed(index)
        flow_matching_loss(model, latents, prompt, generator=generator).loss.backward()
        clip_grad_norm_(list(model.parameters()), 1.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def _cpu_rank(rank: int, world: int, store: str, mode: str, steps: int, batch: int, resolution: int, out: str) -> None:
    import torch.distributed as dist

    from training.parallel import ParallelConfig, build_mesh, build_meta_transformer, parallelize

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        settings = {
            "ddp": {"strategy": "ddp"},
            "fsdp": {"strategy": "fsdp"},
            "fsdp_keep": {"strategy": "fsdp", "reshard_after_forward": False},
            "fsdp_ac": {"strategy": "fsdp", "activation_checkpointing": 1},
        }[mode]
        config = ParallelConfig(**settings)
        parallel = build_mesh(config, torch.device("cpu"), world, rank)

        def build():
            from diffusers import QwenImageTransformer2DModel

            torch.manual_seed(0)
            return QwenImageTransformer2DModel(**MID_TRANSFORMER_CONFIG)

        model = parallelize(build_meta_transformer(MID_TRANSFORMER_CONFIG), parallel, build_full=build).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batches = [
            _batch(MID_TRANSFORMER_CONFIG, batch, resolution, 32, seed=100 * step + rank, device="cpu")
            for step in range(steps + 2)
        ]
        times = _train(model, optimizer, batches, torch.device("cpu"))[2:]
        dist.barrier()
        if rank == 0:
            pathlib.Path(out).write_text(json.dumps({"seconds": sum(times), "steps": len(times)}))
    finally:
        dist.destroy_process_group()


CPU_MODES = ("ddp", "fsdp", "fsdp_keep", "fsdp_ac")


def cpu_part(steps: int, batch: int = 4, resolution: int = 512, modes=CPU_MODES) -> dict:
    import torch.multiprocessing as mp

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode in modes:
            out = str(pathlib.Path(folder) / f"{mode}.json")
            store = str(pathlib.Path(folder) / f"{mode}.store")
            arguments = (2, store, mode, steps, batch, resolution, out)
            mp.start_processes(_cpu_rank, args=arguments, nprocs=2, start_method="spawn")
            timing = json.loads(pathlib.Path(out).read_text())
            results[mode] = 2 * batch * timing["steps"] / timing["seconds"]  # 2 workers x batch
            print(f"[train_scale] cpu {mode}: {results[mode]:.2f} samples/s", flush=True)
    tokens = batch * ((resolution // 16) ** 2 + 32)
    result = {
        "cpu_model": f"4 blocks, hidden 512 (38M parameters), {resolution} px, batch {batch} per worker "
        f"({tokens} tokens per worker and step), 2 gloo workers",
    }
    names = {"ddp": "ddp", "fsdp": "fsdp", "fsdp_keep": "fsdp_keep_gathered", "fsdp_ac": "fsdp_ac"}
    for mode in modes:
        result[f"{names[mode]}_sps"] = round(results[mode], 3)
    if "fsdp" in results and "ddp" in results:
        result["fsdp_vs_ddp"] = round(results["fsdp"] / results["ddp"], 3)
    if "fsdp_keep" in results and "ddp" in results:
        result["fsdp_keep_gathered_vs_ddp"] = round(results["fsdp_keep"] / results["ddp"], 3)
    if "fsdp_ac" in results and "fsdp" in results:
        result["ac_overhead"] = round(results["fsdp"] / results["fsdp_ac"] - 1, 3)
    return result


def _model_flops(config: dict, layers: int, resolution: int, text_tokens: int, batch: int) -> float:
    """Training FLOPs of one step (forward + backward = 3 x forward), recomputation not counted."""
    from training.memory_plan import count_parameters

    params = count_parameters({**config, "num_layers": layers}).total
    image = (resolution // 16) ** 2
    tokens = image + text_tokens
    width = config["num_attention_heads"] * config["attention_head_dim"]
    # A block's weights are two streams of about equal size: image tokens meet one half, text tokens the other, so
    # the dense forward is 2 x (params / 2) x tokens. Attention: QK^T and AV over the joint sequence.
    forward = params * tokens + layers * 4 * tokens * tokens * width
    return 3 * batch * forward


def gpu_part(steps: int) -> dict:
    import torch.distributed as dist

    from training.memory_plan import plan_memory
    from training.parallel import ParallelConfig, build_mesh, build_meta_transformer, init_random_, parallelize

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    name = torch.cuda.get_device_name(device)
    peak_flops = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    total = torch.cuda.get_device_properties(device).total_memory
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    dist.init_process_group("nccl", rank=0, world_size=1)
    runs = []
    try:
        for resolution, checkpointing in ((1328, 1), (256, 0)):
            text_tokens, batch = 256, 1
            layers = 1
            while layers < 60:
                plan = plan_memory(
                    {**QWEN_IMAGE_TRANSFORMER_CONFIG, "num_layers": layers + 1},
                    resolution=resolution,
                    world=1,
                    text_tokens=text_tokens,
                    activation_checkpointing=checkpointing,
                )
                if plan.peak > 0.85 * total:
                    break
                layers += 1
            config = {**QWEN_IMAGE_TRANSFORMER_CONFIG, "num_layers": layers}
            plan = plan_memory(
                config, resolution=resolution, world=1, text_tokens=text_tokens, activation_checkpointing=checkpointing
            )
            parallel = build_mesh(ParallelConfig(strategy="fsdp", activation_checkpointing=checkpointing), device, 1, 0)
            model = parallelize(build_meta_transformer(config), parallel, param_dtype=torch.bfloat16)
            init_random_(model, seed=0)
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
            batches = [_batch(config, batch, resolution, text_tokens, seed=s, device=device) for s in range(steps + 2)]
            torch.cuda.reset_peak_memory_stats(device)
            times = _train(model, optimizer, batches, device)[2:]
            step = sum(times) / len(times)
            flops = _model_flops(config, layers, resolution, text_tokens, batch)
            measured = torch.cuda.max_memory_allocated(device)
            run = {
                "resolution": resolution,
                "blocks": layers,
                "activation_checkpointing": checkpointing,
                "batch": batch,
                "step_s": round(step, 4),
                "tflops_per_s": round(flops / step / 1e12, 1),
                "mfu": round(flops / step / peak_flops, 3) if peak_flops else None,
                "peak_gib": round(measured / 2**30, 2),
                "plan_peak_gib": round(plan.peak / 2**30, 2),
                "plan_vs_measured": round(plan.peak / measured, 3),
            }
            print(f"[train_scale] gpu {run}", flush=True)
            runs.append(run)
            del model, optimizer, batches
            torch.cuda.empty_cache()
    finally:
        dist.destroy_process_group()
    return {"gpu": name, "gpu_memory_gib": round(total / 2**30, 1), "gpu_runs": runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting (after 2 warm-up steps)")
    # 4 x 512 px: 4,224 tokens per worker and step, a few thousand as a real worker's step has.
    parser.add_argument("--batch", type=int, default=4, help="CPU part: samples per worker and step")
    parser.add_argument("--resolution", type=int, default=512, help="CPU part: image side in pixels")
    parser.add_argument("--modes", nargs="+", choices=CPU_MODES, default=list(CPU_MODES), help="CPU part: settings")
    parser.add_argument("--skip-cpu", action="store_true", help="only the GPU part")
    parser.add_argument("--gpu-out", help="also write the JSON here (a device run's $OUT)")
    args = parser.parse_args(argv)
    result = {} if args.skip_cpu else cpu_part(args.steps, args.batch, args.resolution, tuple(args.modes))
    if torch.cuda.is_available():
        result.update(gpu_part(args.steps))
    else:
        result["gpu"] = None
    if args.gpu_out:
        pathlib.Path(args.gpu_out).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(args.gpu_out) / "train_scale.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
