"""Sampling time of our stack vs ``diffusers.QwenImagePipeline`` on the same tiny-preset modules.

    python benchmarks/sampler.py [--rounds 7] [--size 256] [--steps 20]

Both run prompt encoding, the Euler ODE with true CFG (scale 4, negative prompt " "), and the VAE decode, on the
same modules, same seed. They are measured alternately in one run (ours, theirs, ours, ...) so machine noise hits
both; medians are reported. The last line is one JSON object: ``ours_s``, ``diffusers_s``, ``ratio`` (target <= 1.05).
"""

from __future__ import annotations

import argparse
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
from models.presets import build_components  # noqa: E402


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    torch.set_num_threads(1)  # one core each, so the two sides do not fight over threads
    components = build_components("tiny")
    ours = TextToImage(components)
    theirs = components.diffusers_pipeline()
    prompt, common = (
        "a lighthouse on a cliff at sunset",
        {"height": args.size, "width": args.size, "true_cfg_scale": 4.0},
    )

    def run_ours():
        return ours(
            [prompt], num_steps=args.steps, negative_prompt=" ", generator=torch.Generator().manual_seed(0), **common
        )

    def run_theirs():
        return theirs(
            prompt,
            negative_prompt=" ",
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            **common,
        ).images

    run_ours(), run_theirs()  # warm-up: lazy inits, rope caches
    timings: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for round_index in range(args.rounds):
        order = [("ours", run_ours), ("diffusers", run_theirs)]
        for name, fn in order if round_index % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - started)
        print(
            f"round {round_index + 1}/{args.rounds}: ours {timings['ours'][-1]:.3f}s diffusers {timings['diffusers'][-1]:.3f}s",
            flush=True,
        )
    result = {
        "ours_s": round(statistics.median(timings["ours"]), 4),
        "diffusers_s": round(statistics.median(timings["diffusers"]), 4),
        "size": args.size,
        "steps": args.steps,
        "rounds": args.rounds,
        "true_cfg_scale": 4.0,
    }
    result["ratio"] = round(result["ours_s"] / result["diffusers_s"], 4)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
