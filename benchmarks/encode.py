"""Encoder throughput on the tiny preset: batches of 16 (rows grouped by bucket shape) against one sample at a time.

    python benchmarks/encode.py [--num-samples 48] [--batch-size 16] [--rounds 3]

Builds ``--num-samples`` synthetic photo-like JPEGs (``pipelines.sample_data``) in three aspect ratios (1:1, 4:3,
9:16, interleaved as a producer's stream would mix them) with captions of 8 to 40 words, and runs the two encoder
stages of ``pipelines.encode`` over them: ``VaeEncodeStage(EncodeConfig(resolutions=[256]))`` (JPEG decode, resize
and crop, one VAE call per shape in the batch) then ``TextEncodeStage`` (caption choice, condition encoder). The
same rows go through either in batches of ``--batch-size`` or as one-row batches; the two modes alternate for
``--rounds`` rounds (after one untimed warm-up batch each) and medians are reported, so machine noise hits both.
Single-threaded (``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``): a per-core figure, as a 1-CPU Ray actor
runs.

Takes about 2 minutes here (the tiny VAE costs about 0.3 s per 256 px image on one core). The last line printed is
one JSON object: ``batched_sps``, ``single_sps``, ``ratio`` (target at least 3), ``threads``, the same split
by stage (``vae_*``, ``text_*``), and ``text_ratio_without_lm_head`` (see ``text_ratio_without_lm_head``).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.encode import EncodeConfig, TextEncodeStage, VaeEncodeStage  # noqa: E402
from pipelines.sample_data import jpeg, photo_like  # noqa: E402
from pipelines.store import columns as C  # noqa: E402

# (height, width) of the sources: about 1.25x their bucket's size at 256, so none needs enlarging.
SOURCE_SIZES: tuple[tuple[int, int], ...] = ((320, 320), (288, 384), (448, 256))
WORDS = "a red fox jumps over the lazy dog near a river at sunset with mountains and a small wooden cabin".split()
THREADS = 1


def make_batch(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for index in range(num_samples):
        height, width = SOURCE_SIZES[index % len(SOURCE_SIZES)]
        images.append(jpeg(photo_like(rng, height, width)))
        captions.append(" ".join(rng.choice(WORDS, size=int(rng.integers(8, 41)))))
    return {
        C.SAMPLE_ID: np.array([f"sample-{index:04d}" for index in range(num_samples)], dtype=object),
        "image_bytes": np.array(images, dtype=object),
        "caption": np.array(captions, dtype=object),
    }


def split(batch: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    count = len(batch[C.SAMPLE_ID])
    return [{key: value[start : start + size] for key, value in batch.items()} for start in range(0, count, size)]


def run(
    parts: list[dict[str, np.ndarray]], vae: VaeEncodeStage, text: TextEncodeStage
) -> tuple[float, float, list[dict]]:
    """Seconds in the VAE stage, seconds in the text stage, and the outputs."""
    vae_seconds = text_seconds = 0.0
    outputs = []
    for part in parts:
        start = time.perf_counter()
        encoded = vae(part)
        middle = time.perf_counter()
        encoded = text(encoded)
        vae_seconds += middle - start
        text_seconds += time.perf_counter() - middle
        outputs.append(encoded)
    return vae_seconds, text_seconds, outputs


def check_same(batched: list[dict], single: list[dict]) -> None:
    """Batching changes only speed: same buckets, latents and text lengths, within fp16 and batching noise."""
    latent_key = C.latents_column(256)
    batched_rows = [(out, row) for out in batched for row in range(len(out[C.SAMPLE_ID]))]
    single_rows = [(out, row) for out in single for row in range(len(out[C.SAMPLE_ID]))]
    for (left, i), (right, j) in zip(batched_rows, single_rows, strict=True):
        if left[C.SAMPLE_ID][i] != right[C.SAMPLE_ID][j] or left[C.BUCKET][i] != right[C.BUCKET][j]:
            raise AssertionError(f"row {left[C.SAMPLE_ID][i]}: batched and single outputs differ in id or bucket")
        if left[C.TEXT_LEN][i] != right[C.TEXT_LEN][j]:
            raise AssertionError(f"row {left[C.SAMPLE_ID][i]}: text lengths differ")
        shape = (C.LATENT_CHANNELS, left[C.height_column(256)][i] // 8, left[C.width_column(256)][i] // 8)
        a = C.bytes_tensor(left[latent_key][i], shape).astype(np.float32)
        b = C.bytes_tensor(right[latent_key][j], shape).astype(np.float32)
        if not np.allclose(a, b, atol=2e-2, rtol=2e-2):
            raise AssertionError(f"row {left[C.SAMPLE_ID][i]}: latents differ by {np.abs(a - b).max()}")


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    cv2.setNumThreads(THREADS)
    torch.manual_seed(args.seed)

    config = EncodeConfig(resolutions=[256])
    vae, text = VaeEncodeStage(config), TextEncodeStage(config)
    batch = make_batch(args.num_samples, args.seed)
    modes = {"batched": split(batch, args.batch_size), "single": split(batch, 1)}
    for parts in modes.values():
        run(parts[:1], vae, text)  # warm-up: first calls allocate and pick kernels

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in modes}
    outputs: dict[str, list[dict]] = {}
    for round_index in range(args.rounds):
        order = list(modes) if round_index % 2 == 0 else list(modes)[::-1]
        for name in order:
            vae_seconds, text_seconds, outputs[name] = run(modes[name], vae, text)
            times[name].append((vae_seconds, text_seconds))
            print(f"round {round_index} {name:>7}: vae {vae_seconds:6.2f} s  text {text_seconds:6.2f} s", flush=True)
    check_same(outputs["batched"], outputs["single"])
    groups = [len(set(out[C.BUCKET])) for out in outputs["batched"]]

    def sps(name: str, stage: slice) -> float:
        return args.num_samples / statistics.median(sum(run[stage]) for run in times[name])

    result: dict[str, object] = {
        "num_samples": args.num_samples,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "threads": THREADS,
        "vae_calls_per_batch": statistics.mean(groups),
    }
    for prefix, stage in (("", slice(0, 2)), ("vae_", slice(0, 1)), ("text_", slice(1, 2))):
        batched, single = sps("batched", stage), sps("single", stage)
        result[f"{prefix}batched_sps"] = round(batched, 2)
        result[f"{prefix}single_sps"] = round(single, 2)
        result[f"{prefix}ratio"] = round(batched / single, 2)
    result["text_ratio_without_lm_head"] = round(text_ratio_without_lm_head(text, outputs, args.rounds), 2)
    return result


def text_ratio_without_lm_head(text: TextEncodeStage, vae_outputs: dict[str, list[dict]], rounds: int) -> float:
    """Batched / single text throughput when the encoder skips its LM head (``logits_to_keep=1``).

    ``ConditionEncoder.encode`` calls ``Qwen2_5_VLForConditionalGeneration`` for its hidden states, which also
    computes [B, L, 151936] logits nobody reads: on the tiny preset (hidden 64) that is about 97% of the text
    stage, and its cost grows with the padded tokens, so batching loses. This measures the stage without it.
    """
    model = text.encoder.text_encoder
    forward = model.forward
    model.forward = functools.partial(forward, logits_to_keep=1)
    try:
        seconds: dict[str, list[float]] = {name: [] for name in vae_outputs}
        for round_index in range(rounds):
            order = list(vae_outputs) if round_index % 2 == 0 else list(vae_outputs)[::-1]
            for name in order:
                start = time.perf_counter()
                for part in vae_outputs[name]:
                    text(part)
                seconds[name].append(time.perf_counter() - start)
    finally:
        del model.forward  # back to the class's forward
    return statistics.median(seconds["single"]) / statistics.median(seconds["batched"])


if __name__ == "__main__":
    print(json.dumps(main()))
