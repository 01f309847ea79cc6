"""Serving the published model's size on a GPU: seconds per image, ours vs diffusers, and peak memory per profile.

    python benchmarks/serve_real.py [--size 1328] [--steps 50] [--rounds 2] [--out result.json]

On a CUDA device: the transformer (60 blocks, 20.4B parameters), the VAE and the Qwen2.5-VL-7B condition encoder are
built from the published configs with random weights in bf16 (nothing is downloaded: speed and memory do not depend
on the weights' values). With true CFG (scale 4) at ``--size``² and ``--steps`` steps, one image takes:

- ``ours_s``: ``models.generation.TextToImage`` (our sampler, under ``inference_mode``), placement ``resident``;
- ``diffusers_s``: ``diffusers.QwenImagePipeline`` built from the same modules (target: ``ratio`` = ours / diffusers
  at most 1.0). Diffusers' own figure for the real model in bf16 is about 37-40 s per 1328² image on an H100.

Measured alternately (ours, diffusers, ours, ...), medians reported. Then the peak GPU memory of one call (2 steps:
memory does not grow with steps) under each single-GPU placement of ``models/placement.py`` beside the memory plan's
figure for it (``serving/memory.py``): ``peak_gib`` and ``planned_gib`` per profile.

Without a GPU it says so, runs a smoke of the same code at the tiny preset on the CPU (64², 2 steps) and exits 0.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.generation import TextToImage  # noqa: E402
from models.placement import place  # noqa: E402
from models.presets import (  # noqa: E402
    QWEN_IMAGE_SCHEDULER_CONFIG,
    QWEN_IMAGE_TEXT_ENCODER_CONFIG,
    QWEN_IMAGE_TRANSFORMER_CONFIG,
    QWEN_IMAGE_VAE_CONFIG,
    Components,
    build_components,
    drop_lm_head,
)
from serving.memory import GIB, Workload, model_configs, plan_serving  # noqa: E402

PROMPT = (
    'A coffee shop entrance features a chalkboard sign reading "Qwen Coffee 😊 $2 per cup," with a neon light '
    'beside it displaying "通义千问". Next to it hangs a poster showing a beautiful Chinese woman. Ultra HD, 4K.'
)


def real_components(device: str) -> Components:
    """The three published architectures with random bf16 weights, built on ``device`` (seconds, no download)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from models.tokenizer import build_qwen2_tokenizer

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = QwenImageTransformer2DModel(**QWEN_IMAGE_TRANSFORMER_CONFIG)
            vae = AutoencoderKLQwenImage(**QWEN_IMAGE_VAE_CONFIG)
            config = Qwen2_5_VLConfig(**copy.deepcopy(QWEN_IMAGE_TEXT_ENCODER_CONFIG))
            text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    for module in (transformer, vae, text_encoder):
        module.eval().requires_grad_(False)
    return Components(
        preset="qwen-image",
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_qwen2_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG),
    )


def timed(fn, sync: bool) -> float:
    if sync:
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def compare(components: Components, size: int, steps: int, rounds: int, sync: bool) -> dict:
    """Alternate our generator and diffusers' pipeline over the same modules; medians of ``rounds`` each."""
    ours = TextToImage(components)
    theirs = components.diffusers_pipeline()
    common = dict(height=size, width=size, num_steps=steps, true_cfg_scale=4.0, negative_prompt=" ")

    def run_ours():
        ours([PROMPT], seeds=[0], **common)

    def run_theirs():
        with torch.inference_mode():
            theirs(
                prompt=PROMPT,
                negative_prompt=" ",
                height=size,
                width=size,
                num_inference_steps=steps,
                true_cfg_scale=4.0,
                generator=torch.Generator("cpu").manual_seed(0),
                output_type="np",
            )

    run_ours()  # first calls pay kernel selection and allocation: not measured
    run_theirs()
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for round_index in range(rounds):
        times["ours"].append(timed(run_ours, sync))
        times["diffusers"].append(timed(run_theirs, sync))
        print(f"round {round_index + 1}: ours {times['ours'][-1]:.2f} s, diffusers {times['diffusers'][-1]:.2f} s")
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    return {"ours_s": round(ours_s, 3), "diffusers_s": round(theirs_s, 3), "ratio": round(ours_s / theirs_s, 3)}


def profile_peaks(components: Components, size: int, steps: int, image_s: float) -> dict:
    """Peak GPU memory of one 2-step call per single-GPU placement, beside the plan's figure, and ``image_s`` (the
    resident time of a ``steps``-step image) carried over: a placement's extra time over resident in the 2-step call
    is paid once per call (``model_offload``, ``encoder_on_cpu``: moves, encoder on the CPU) or at every step
    (``block_offload``: the blocks are copied at each forward pass), which gives ``est_image_s``."""
    configs = model_configs("qwen-image", [])
    workload = Workload(images=1, pixels=size * size, text_tokens=64)
    results = {}
    for mode in ("resident", "model_offload", "encoder_on_cpu", "block_offload"):
        components.to(device="cpu")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        placement = place(components, mode, "cuda")
        model = TextToImage(components, placement)
        started = time.perf_counter()
        model([PROMPT], height=size, width=size, num_steps=2, seeds=[0])
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        plan = plan_serving(configs, placement=mode, dtype="bfloat16", workload=workload)
        extra = seconds - results["resident"]["two_step_s"] if results else 0.0
        if mode == "block_offload":
            extra *= steps / 2
        results[mode] = {
            "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
            "planned_gib": round(plan.needed("cuda:0") / GIB, 2),
            "two_step_s": round(seconds, 2),
            "est_image_s": round(image_s + max(0.0, extra), 2),
        }
        print(f"{mode}: peak {results[mode]['peak_gib']} GiB, planned {results[mode]['planned_gib']} GiB")
    return results  # block_offload comes last: its hooks stay on the transformer


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1328)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--skip-profiles", action="store_true", help="only the ours-vs-diffusers timing")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: the real-size benchmark needs a GPU; running a CPU smoke of the same code at tiny size")
        result = {"device": "cpu", "smoke": True, "size": 64, "steps": 2}
        result.update(compare(build_components("tiny"), 64, 2, 1, sync=False))
    else:
        name = torch.cuda.get_device_name()
        print(f"building the published architectures with random bf16 weights on {name}")
        started = time.perf_counter()
        components = real_components("cuda")
        drop_lm_head(components.text_encoder)
        print(f"built in {time.perf_counter() - started:.1f} s")
        result = {"device": name, "size": args.size, "steps": args.steps, "dtype": "bfloat16", "true_cfg": 4.0}
        result.update(compare(components, args.size, args.steps, args.rounds, sync=True))
        result["timing_peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)  # both sides, resident
        if not args.skip_profiles:
            result["profiles"] = profile_peaks(components, args.size, args.steps, result["ours_s"])
    line = json.dumps(result)
    if args.out:
        pathlib.Path(args.out).write_text(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
