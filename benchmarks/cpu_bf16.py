"""The nano model's training step on CPU in fp32 and in bf16, with PyTorch's flash and math attention kernels.

    python benchmarks/cpu_bf16.py [--threads 2] [--steps 8]

One step is what the demo's pretraining worker does (``configs/pretrain_nano.yaml``): the flow-matching loss of a
batch of 64 samples at 64 px (16 image tokens) with 20 text tokens, backward, fused AdamW. bf16 is autocast, as
``training.parallel.autocast`` runs it. Also the raw matrix product of the MLP's shape. The last line is one JSON
object: seconds per step (median after two warm-up steps) per variant, and the ratios the recipe relies on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import statistics
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.flow_matching import flow_matching_loss  # noqa: E402
from models.presets import build_components  # noqa: E402
from models.prompt_embeds import PromptEmbeds  # noqa: E402

BATCH, LATENT_SIDE, TEXT_TOKENS = 64, 8, 20


def step_seconds(bf16: bool, math: bool, steps: int) -> float:
    model = build_components("nano", parts=("transformer",), seed=0).transformer.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(BATCH, 16, LATENT_SIDE, LATENT_SIDE, generator=generator)
    width = model.config.joint_attention_dim
    prompt = PromptEmbeds(
        torch.randn(BATCH, TEXT_TOKENS, width, generator=generator), torch.ones(BATCH, TEXT_TOKENS, dtype=torch.long)
    )
    times = []
    for index in range(steps + 2):
        started = time.perf_counter()
        kernel = sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext()
        with kernel, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = flow_matching_loss(model, latents, prompt, generator=torch.Generator().manual_seed(index))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def matmul_gflops(dtype: torch.dtype, repeats: int = 50) -> float:
    inputs, weight = torch.randn(2304, 256, dtype=dtype), torch.randn(1024, 256, dtype=dtype)
    for _ in range(3):
        torch.nn.functional.linear(inputs, weight)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(inputs, weight)
    return 2 * 2304 * 256 * 1024 * repeats / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "threads": args.threads,
        "batch": BATCH,
        "image_tokens": (LATENT_SIDE // 2) ** 2,
        "text_tokens": TEXT_TOKENS,
    }
    for name, bf16, math in [
        ("fp32_flash", False, False),
        ("fp32_math", False, True),
        ("bf16_flash", True, False),
        ("bf16_math", True, True),
    ]:
        result[f"{name}_s_per_step"] = round(step_seconds(bf16, math, args.steps), 4)
        print(f"[cpu_bf16] {name}: {result[f'{name}_s_per_step']} s/step", flush=True)
    result["matmul_fp32_gflops"] = round(matmul_gflops(torch.float32))
    result["matmul_bf16_gflops"] = round(matmul_gflops(torch.bfloat16))
    result["bf16_math_speedup_over_fp32_flash"] = round(
        result["fp32_flash_s_per_step"] / result["bf16_math_s_per_step"], 2
    )
    result["bf16_flash_slowdown_over_bf16_math"] = round(
        result["bf16_flash_s_per_step"] / result["bf16_math_s_per_step"], 2
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
