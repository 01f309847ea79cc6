"""The VAE on one-frame images: diffusers' causal 3D convolutions against the 2D convolutions they reduce to.

    python benchmarks/vae_frames.py [--config tiny|published] [--resolution 256] [--batch 4] [--rounds 3]

Builds the Qwen-Image VAE with random weights (seed 0): ``tiny`` is the tiny preset's (base_dim 32), ``published``
the released architecture (``AutoencoderKLQwenImage()``'s defaults: base_dim 96, two res blocks per level). Encodes
``--batch`` random images at ``--resolution`` and decodes the latents, with ``LatentVAE(frame_convs="3d")`` and
``LatentVAE(frame_convs="2d")`` alternately for ``--rounds`` rounds after one warm-up each; medians are reported.
Both modes run on the same inputs, so the outputs are compared too.

The last line printed is one JSON object: seconds per image for encode and decode in each mode (``encode_3d_s``,
``encode_2d_s``, ``decode_3d_s``, ``decode_2d_s``), the speed-ups (``encode_speedup``, ``decode_speedup``), the
largest differences between the modes (``latent_max_abs_diff``, ``image_max_abs_diff``) and ``threads``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from diffusers import AutoencoderKLQwenImage  # noqa: E402

from models.presets import TINY_VAE_CONFIG  # noqa: E402
from models.vae import LatentVAE  # noqa: E402

CONFIGS = {"tiny": TINY_VAE_CONFIG, "published": {}}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(**CONFIGS[args.config]).eval()
    modes = {mode: LatentVAE(vae, frame_convs=mode) for mode in ("3d", "2d")}
    images = torch.rand(args.batch, 3, args.resolution, args.resolution) * 2 - 1
    for latent_vae in modes.values():  # warm-up: first calls allocate and pick kernels
        latent_vae.decode(latent_vae.encode(images[:1]))

    seconds: dict[str, dict[str, list[float]]] = {mode: {"encode": [], "decode": []} for mode in modes}
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for round_index in range(args.rounds):
        order = list(modes) if round_index % 2 == 0 else list(modes)[::-1]
        for mode in order:
            start = time.perf_counter()
            latents = modes[mode].encode(images)
            middle = time.perf_counter()
            decoded = modes[mode].decode(latents)
            seconds[mode]["encode"].append(middle - start)
            seconds[mode]["decode"].append(time.perf_counter() - middle)
            outputs[mode] = (latents, decoded)
            print(
                f"round {round_index} {mode}: encode {middle - start:6.2f} s  decode {seconds[mode]['decode'][-1]:6.2f} s",
                flush=True,
            )
    # The decode comparison decodes the same latents both ways, so encode differences do not carry into it.
    same_latents = outputs["3d"][0]
    image_diff = (modes["2d"].decode(same_latents) - modes["3d"].decode(same_latents)).abs().max().item()

    def per_image(mode: str, part: str) -> float:
        return statistics.median(seconds[mode][part]) / args.batch

    result: dict[str, object] = {"config": args.config, "resolution": args.resolution, "batch": args.batch}
    for part in ("encode", "decode"):
        result[f"{part}_3d_s"] = round(per_image("3d", part), 4)
        result[f"{part}_2d_s"] = round(per_image("2d", part), 4)
        result[f"{part}_speedup"] = round(per_image("3d", part) / per_image("2d", part), 2)
    result["latent_max_abs_diff"] = (outputs["2d"][0] - outputs["3d"][0]).abs().max().item()
    result["image_max_abs_diff"] = image_diff
    result["threads"] = torch.get_num_threads()
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
