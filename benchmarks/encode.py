"""Encoder throughput on the tiny preset, per core: where decoding runs, VAE batching by shape, the text encoder.

    python benchmarks/encode.py [--num-samples 48] [--batch-size 16] [--rounds 3] [--offload-samples 24]

Three measurements, all single-threaded (``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``): per-core figures,
as a 1-CPU Ray actor runs, timed in CPU seconds of this process (``clock``). Each alternates its modes for
``--rounds`` rounds after an untimed warm-up and reports medians, so machine noise hits every mode alike.

1. Decoding in the CPU pool vs in the VAE actor, the producer figure that matters at scale, where the VAE actor holds
   a GPU and the CPU pool scales out separately: the VAE actor's samples/s when it receives prepared pixels
   (``VaeEncodeStage`` on ``PreparePixels`` output, the actor's time only) against the actor doing what it did before
   the CPU stage existed, bytes in (``PreparePixels`` then ``VaeEncodeStage`` in the actor's own time). The gain is
   ``1 + decode-and-crop time / VAE time``, so it depends on how large the sources are next to the crops: it is
   measured for three source mixes of the three bucket shapes, ``0.1MP`` (about 1.25x their 256 px size, the
   smallest a 256 px stage takes), ``2MP`` (about 1.1x the 1328 px sizes, the smallest the last stage takes) and
   ``12MP`` (camera photos), encoded at 256 px (``--offload-samples`` JPEGs each).
2. Batched vs single-image VAE calls per shape: ``--vae-batch`` crops of one 256 px bucket shape in one call against
   one call each (``vae_batch_ratio_by_shape``, batched / single images/s).
3. The encoder stages batched vs one sample at a time: ``--num-samples`` photo-like JPEGs in three aspect ratios
   (1:1, 4:3, 9:16, interleaved as a producer's stream would mix them, 0.1 MP) with captions of 8 to 40 words, prepared
   once (untimed), then ``VaeEncodeStage(EncodeConfig(resolutions=[256]))`` (one VAE call per shape in the batch) and
   ``TextEncodeStage`` (caption choice, condition encoder) in batches of ``--batch-size`` or one-row batches.

Takes about 3 minutes here (the tiny VAE costs about 0.17 s per 256 px image on one core). The last line printed is one
JSON object: ``vae_pixels_sps``, ``offload_ratio`` and ``prepare_sps`` per source mix (``vae_bytes_sps`` is the
actor's rate bytes in; the target is an offload ratio of at least 1.5), ``vae_batch_ratio_by_shape``, then the stage
figures ``batched_sps``, ``single_sps``, ``ratio``, the same split by stage (``vae_*``, ``text_*``; ``vae_batched_sps``
is the VAE actor fed pixels, what ``jobs/plan.py`` sizes the VAE pool by), ``text_ratio_without_lm_head`` (see
``text_ratio_without_lm_head``) and ``threads``.
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

from models.vae import images_to_tensor  # noqa: E402
from pipelines.encode import (  # noqa: E402
    EncodeConfig,
    PreparePixels,
    TextEncodeStage,
    VaeEncodeStage,
    cover_and_crop,
    shape_groups,
)
from pipelines.synth.sample_corpus import jpeg, photo_like  # noqa: E402
from store import columns as C  # noqa: E402
from store.buckets import bucket_size  # noqa: E402

# (height, width) of the sources of the stage benchmark: about 1.25x their bucket's size at 256, none needs enlarging.
SOURCE_SIZES: tuple[tuple[int, int], ...] = ((320, 320), (288, 384), (448, 256))
# The offload benchmark's source mixes: the same three buckets (1x1, 4x3, 9x16) at three sizes.
SOURCE_MIXES: dict[str, tuple[tuple[int, int], ...]] = {
    "0.1MP": SOURCE_SIZES,
    "2MP": ((1440, 1440), (1200, 1600), (1920, 1080)),
    "12MP": ((3456, 3456), (3000, 4000), (4608, 2592)),
}
BUCKETS = ("1x1", "4x3", "9x16")
WORDS = "a red fox jumps over the lazy dog near a river at sunset with mountains and a small wooden cabin".split()
THREADS = 1
# CPU seconds of this process, not wall time: the benchmark runs one thread, so its CPU time is its work, and other
# work on a shared machine (this one has 2 cores and several users) does not count against either mode.
clock = time.process_time
RESOLUTION = 256


def make_batch(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for index in range(num_samples):
        height, width = SOURCE_SIZES[index % len(SOURCE_SIZES)]
        images.append(jpeg(photo_like(rng, height, width)))
        captions.append(" ".join(rng.choice(WORDS, size=int(rng.integers(8, 41)))))
    return {
        C.SAMPLE_ID: np.array([f"sample-{index:04d}" for index in range(num_samples)], dtype=object),
        C.IMAGE_BYTES: np.array(images, dtype=object),
        C.CAPTION: np.array(captions, dtype=object),
    }


def mix_batch(sizes: tuple[tuple[int, int], ...], num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """``num_samples`` JPEGs of ``sizes``, interleaved. One image per size, its bytes repeated: decoding costs the
    same every time (nothing is cached), and a 12 MP photo-like scene takes a second to draw."""
    rng = np.random.default_rng(seed)
    drawn = [jpeg(photo_like(rng, height, width)) for height, width in sizes]
    images = np.empty(num_samples, dtype=object)
    images[:] = [drawn[index % len(drawn)] for index in range(num_samples)]
    return {C.SAMPLE_ID: np.array([f"s{index}" for index in range(num_samples)], dtype=object), C.IMAGE_BYTES: images}


def split(batch: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    count = len(batch[C.SAMPLE_ID])
    return [{key: value[start : start + size] for key, value in batch.items()} for start in range(0, count, size)]


def offload(prepare: PreparePixels, vae: VaeEncodeStage, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Per source mix: the VAE actor's samples/s fed pixels vs fed bytes, and the CPU stage's samples/s. The two modes
    alternate batch by batch (paired, so a busy spell of the machine falls on both)."""
    result: dict[str, dict[str, float]] = {"vae_pixels_sps": {}, "vae_bytes_sps": {}, "offload_ratio": {}}
    result["prepare_sps"] = {}
    for name, sizes in SOURCE_MIXES.items():
        parts = split(mix_batch(sizes, args.offload_samples, args.seed), args.batch_size)
        prepared = [prepare(part) for part in parts]  # the CPU pool's output, made before the actor's clock runs
        vae(prepared[0])  # warm-up
        seconds: dict[str, list[float]] = {"pixels": [], "bytes": [], "prepare": []}
        for round_index in range(args.rounds):
            total = dict.fromkeys(seconds, 0.0)
            for index, part in enumerate(parts):
                for mode in ("pixels", "bytes") if (round_index + index) % 2 == 0 else ("bytes", "pixels"):
                    start = clock()
                    if mode == "pixels":
                        vae(prepared[index])
                        total["pixels"] += clock() - start
                        continue
                    ready = prepare(part)  # the actor's own time: decode and crop, then encode
                    total["prepare"] += clock() - start
                    vae(ready)
                    total["bytes"] += clock() - start
            for mode, value in total.items():
                seconds[mode].append(value)
        rates = {mode: args.offload_samples / statistics.median(values) for mode, values in seconds.items()}
        result["vae_pixels_sps"][name] = round(rates["pixels"], 2)
        result["vae_bytes_sps"][name] = round(rates["bytes"], 2)
        result["offload_ratio"][name] = round(rates["pixels"] / rates["bytes"], 2)
        result["prepare_sps"][name] = round(rates["prepare"], 2)
        print(f"offload {name:>5}: {result['offload_ratio'][name]:.2f}x, prepare {rates['prepare']:.1f}/s", flush=True)
    return result


def batch_ratio_by_shape(vae: VaeEncodeStage, args: argparse.Namespace) -> dict[str, float]:
    """Per 256 px bucket shape: images/s of one VAE call on ``--vae-batch`` crops / of one call per crop."""
    rng = np.random.default_rng(args.seed)
    ratios = {}
    for bucket in BUCKETS:
        width, height = bucket_size(bucket, RESOLUTION)
        crops = np.stack([cover_and_crop(photo_like(rng, height, width), width, height) for _ in range(args.vae_batch)])
        stacked, singles = images_to_tensor(crops), [images_to_tensor(crops[i : i + 1]) for i in range(len(crops))]
        vae.vae.encode(stacked), vae.vae.encode(singles[0])  # warm-up
        seconds: dict[str, list[float]] = {"batched": [], "single": []}
        for round_index in range(args.rounds):
            for mode in ("batched", "single") if round_index % 2 == 0 else ("single", "batched"):
                start = clock()
                if mode == "batched":
                    vae.vae.encode(stacked)
                else:
                    for single in singles:
                        vae.vae.encode(single)
                seconds[mode].append(clock() - start)
        ratios[f"{height}x{width}"] = round(
            statistics.median(seconds["single"]) / statistics.median(seconds["batched"]), 2
        )
        print(f"vae batch of {args.vae_batch} at {height}x{width}: {ratios[f'{height}x{width}']:.2f}x", flush=True)
    return ratios


def run(
    parts: list[dict[str, np.ndarray]], vae: VaeEncodeStage, text: TextEncodeStage
) -> tuple[float, float, list[dict]]:
    """Seconds in the VAE stage, seconds in the text stage, and the outputs."""
    vae_seconds = text_seconds = 0.0
    outputs = []
    for part in parts:
        start = clock()
        encoded = vae(part)
        middle = clock()
        encoded = text(encoded)
        vae_seconds += middle - start
        text_seconds += clock() - middle
        outputs.append(encoded)
    return vae_seconds, text_seconds, outputs


def check_same(batched: list[dict], single: list[dict]) -> None:
    """Batching changes only speed: same buckets, latents and text lengths, within fp16 and batching noise."""
    latent_key = C.latents_column(RESOLUTION)
    batched_rows = [(out, row) for out in batched for row in range(len(out[C.SAMPLE_ID]))]
    single_rows = [(out, row) for out in single for row in range(len(out[C.SAMPLE_ID]))]
    for (left, i), (right, j) in zip(batched_rows, single_rows, strict=True):
        if left[C.SAMPLE_ID][i] != right[C.SAMPLE_ID][j] or left[C.BUCKET][i] != right[C.BUCKET][j]:
            raise AssertionError(f"row {left[C.SAMPLE_ID][i]}: batched and single outputs differ in id or bucket")
        if left[C.TEXT_LEN][i] != right[C.TEXT_LEN][j]:
            raise AssertionError(f"row {left[C.SAMPLE_ID][i]}: text lengths differ")
        shape = (C.LATENT_CHANNELS, left[C.height_column(RESOLUTION)][i] // 8, left[C.width_column(RESOLUTION)][i] // 8)
        a = C.bytes_tensor(left[latent_key][i], shape).astype(np.float32)
        b = C.bytes_tensor(right[latent_key][j], shape).astype(np.float32)
        if not np.allclose(a, b, atol=2e-2, rtol=2e-2):
            raise AssertionError(f"row {left[C.SAMPLE_ID][i]}: latents differ by {np.abs(a - b).max()}")


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--offload-samples", type=int, default=24)
    parser.add_argument("--vae-batch", type=int, default=EncodeConfig().vae_pool.batch_size)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    cv2.setNumThreads(THREADS)
    torch.manual_seed(args.seed)

    config = EncodeConfig(resolutions=[RESOLUTION])
    prepare, vae, text = PreparePixels(config), VaeEncodeStage(config), TextEncodeStage(config)
    result: dict[str, object] = {
        "num_samples": args.num_samples,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "threads": THREADS,
        "offload_samples": args.offload_samples,
        **offload(prepare, vae, args),
        "vae_batch": args.vae_batch,
        "vae_batch_ratio_by_shape": batch_ratio_by_shape(vae, args),
    }

    prepared = prepare(make_batch(args.num_samples, args.seed))  # the stage benchmark times the encoders only
    modes = {"batched": split(prepared, args.batch_size), "single": split(prepared, 1)}
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
    result["vae_calls_per_batch"] = statistics.mean(len(shape_groups(part, [RESOLUTION])) for part in modes["batched"])

    def sps(name: str, stage: slice) -> float:
        return args.num_samples / statistics.median(sum(run[stage]) for run in times[name])

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
                start = clock()
                for part in vae_outputs[name]:
                    text(part)
                seconds[name].append(clock() - start)
    finally:
        del model.forward  # back to the class's forward
    return statistics.median(seconds["single"]) / statistics.median(seconds["batched"])


if __name__ == "__main__":
    print(json.dumps(main()))
