"""Producer CPU throughput: decode + every CPU operator, against decoding the same files alone.

Generates photo-like JPEGs (smooth gradients, shapes, blur, grain, rendered text; 512 to 2048 px
per side, quality 90) into a temporary folder, then measures in one run, single-threaded
(``cv2.setNumThreads(1)``), the three interleaved so that machine noise hits them alike:

- ``pipeline_ips_per_core``: ``ScoreOperators`` over the bytes with its default ``DecodeConfig``
  (JPEGs decoded at 1/2 or 1/4 by libjpeg's DCT scaling, downscaled to the analysis size, every operator);
- ``decode_only_ips_per_core``: full-size ``cv2.imdecode`` of every file, what a naive pipeline pays before
  any operator; ``ratio_to_decode`` = pipeline / this;
- ``reduced_decode_ips_per_core``: ``cv2.imdecode`` of every file at the same reduction the pipeline uses
  for it (nothing else), so ``ratio_to_reduced_decode`` = pipeline / this isolates what the operators and the
  downscale cost on top of the decode the pipeline cannot avoid;
- ``scaling_2_vs_1``: pipeline throughput of 2 worker processes over 1 (the pools are started and
  warmed up before timing).

The analysis size and thresholds are the pipeline's defaults: the benchmark measures them, it does not tune them.

Run: ``python benchmarks/producer_cpu.py`` (about 40 s here) or ``--quick`` (about 15 s). The last line
printed is one JSON object. Targets: ``ratio_to_decode >= 0.6``, ``scaling_2_vs_1 >= 1.7``.
"""

from __future__ import annotations

import os

# One thread per worker, as Ray runs a 1-CPU worker (it sets OMP_NUM_THREADS=1): the OpenBLAS
# copies that numpy and OpenCV load would otherwise size their thread pools to every core. Set
# before numpy and cv2 are imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.decode import DecodeConfig, jpeg_decode_flags, jpeg_reduction  # noqa: E402
from pipelines.operators import columns  # noqa: E402
from pipelines.operators.registry import ScoreOperators  # noqa: E402

_WORDS = ["Qwen", "IMAGE", "Ray", "producer", "SALE 50%", "Cafe", "2025", "north gate", "exit", "Hello world"]


def photo_like(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A BGR uint8 image with the statistics of a photograph: smooth fields, edges, text, grain."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), dtype=np.float32)
    for channel in range(3):
        phase, frequency_x, frequency_y = rng.uniform(0, 6.3), rng.uniform(1, 4), rng.uniform(1, 4)
        field = np.sin(x / width * frequency_x + phase) * np.cos(y / height * frequency_y - phase)
        image[..., channel] = rng.uniform(90, 160) + rng.uniform(40, 70) * field
    image = image.clip(0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(8, 20))):
        color = tuple(int(value) for value in rng.integers(0, 256, 3))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            cv2.circle(image, center, int(rng.integers(8, max(9, min(height, width) // 4))), color, -1, cv2.LINE_AA)
        else:
            corner = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.rectangle(image, center, corner, color, -1, cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.2))
    # A detailed region (foliage, gravel, fabric): band-limited noise over part of the frame.
    top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    bottom, right = top + int(rng.integers(height // 4, height // 2)), left + int(rng.integers(width // 4, width // 2))
    detail = cv2.GaussianBlur(rng.normal(0.0, 1.0, (bottom - top, right - left, 1)).astype(np.float32), (0, 0), 1.2)
    detail = detail[..., None] if detail.ndim == 2 else detail
    region = image[top:bottom, left:right].astype(np.float32) + rng.uniform(40, 90) * detail
    image[top:bottom, left:right] = region.clip(0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        text = str(rng.choice(_WORDS))
        scale = min(height, width) / rng.uniform(300, 700)
        origin = (int(rng.integers(0, width // 2)), int(rng.integers(height // 8, height)))
        color = tuple(int(value) for value in rng.integers(0, 256, 3))
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, max(1, round(scale * 2)), cv2.LINE_AA)
    grain = rng.normal(0.0, rng.uniform(3.0, 7.0), image.shape).astype(np.float32)
    return (image.astype(np.float32) + grain).clip(0, 255).astype(np.uint8)


def write_corpus(folder: Path, num_images: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(num_images):
        height, width = (int(side) for side in rng.integers(512, 2049, 2))
        ok, encoded = cv2.imencode(".jpg", photo_like(height, width, rng), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        path = folder / f"{index:05d}.jpg"
        path.write_bytes(encoded.tobytes())
        paths.append(path)
    return paths


def time_decode_only(blobs: list[bytes]) -> float:
    start = time.perf_counter()
    for blob in blobs:
        cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    return time.perf_counter() - start


def reduced_decode_flags(blobs: list[bytes]) -> list[int]:
    """The ``cv2.imdecode`` flags that decode each JPEG at the reduction ``decode_image`` picks for it (read from
    the header before timing: the pipeline's header read costs about 0.02 ms)."""
    from PIL import Image

    short_side = DecodeConfig().analysis_short_side
    flags = []
    for blob in blobs:
        width, height = Image.open(io.BytesIO(blob)).size
        flags.append(jpeg_decode_flags(jpeg_reduction(min(width, height), short_side)))
    return flags


def time_reduced_decode(blobs: list[bytes], flags: list[int]) -> float:
    start = time.perf_counter()
    for blob, flag in zip(blobs, flags, strict=True):
        cv2.imdecode(np.frombuffer(blob, np.uint8), flag)
    return time.perf_counter() - start


def time_pipeline(blobs: list[bytes], stage: ScoreOperators, batch_size: int = 16) -> float:
    start = time.perf_counter()
    for offset in range(0, len(blobs), batch_size):
        batch = np.empty(len(blobs[offset : offset + batch_size]), dtype=object)
        batch[:] = blobs[offset : offset + batch_size]
        stage({columns.IMAGE_BYTES: batch})
    return time.perf_counter() - start


_WORKER_STAGE: ScoreOperators | None = None
_WORKER_BARRIER = None


def _init_worker(barrier) -> None:  # noqa: ANN001 - a multiprocessing Barrier proxy
    global _WORKER_STAGE, _WORKER_BARRIER
    _WORKER_STAGE = ScoreOperators()  # sets cv2.setNumThreads(1)
    _WORKER_BARRIER = barrier


def _score_files(paths: list[str]) -> int:
    assert _WORKER_STAGE is not None
    blobs = [Path(path).read_bytes() for path in paths]
    batch = np.empty(len(blobs), dtype=object)
    batch[:] = blobs
    _WORKER_STAGE({columns.IMAGE_BYTES: batch})
    return len(blobs)


def _warm_up(paths: list[str]) -> int:
    """Score a few files, then wait for every worker: each worker gets exactly one warm-up task."""
    num_scored = _score_files(paths)
    assert _WORKER_BARRIER is not None
    _WORKER_BARRIER.wait()
    return num_scored


def time_workers(paths: list[Path], num_workers: int, num_repeats: int) -> float:
    """Median wall time for ``num_workers`` processes to score all files, once all are warm."""
    chunks = [[str(path) for path in paths[offset : offset + 4]] for offset in range(0, len(paths), 4)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(num_workers)
    with context.Pool(num_workers, initializer=_init_worker, initargs=(barrier,)) as pool:
        # Spawned workers take about a second to import; without this the first timed pass can run
        # on fewer workers than asked for.
        pool.map(_warm_up, chunks[:num_workers], chunksize=1)
        times = []
        for _ in range(num_repeats):
            start = time.perf_counter()
            sum(pool.map(_score_files, chunks, chunksize=1))
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    parser.add_argument("--num-images", type=int, default=None)
    args = parser.parse_args()
    num_images = args.num_images or (32 if args.quick else 96)
    num_repeats = 2 if args.quick else 3
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory(prefix="producer_cpu_") as tmp:
        started = time.perf_counter()
        paths = write_corpus(Path(tmp), num_images)
        blobs = [path.read_bytes() for path in paths]
        megabytes = sum(len(blob) for blob in blobs) / 1e6
        print(f"generated {num_images} JPEGs ({megabytes:.1f} MB) in {time.perf_counter() - started:.1f} s")

        stage = ScoreOperators()
        time_pipeline(blobs[:4], stage)  # warm-up
        flags = reduced_decode_flags(blobs)
        decode_times, reduced_times, pipeline_times = [], [], []
        for _ in range(num_repeats):  # interleaved, so machine noise hits all three alike
            decode_times.append(time_decode_only(blobs))
            reduced_times.append(time_reduced_decode(blobs, flags))
            pipeline_times.append(time_pipeline(blobs, stage))
        decode_ips = num_images / statistics.median(decode_times)
        reduced_ips = num_images / statistics.median(reduced_times)
        pipeline_ips = num_images / statistics.median(pipeline_times)
        print(
            f"single core: full decode {decode_ips:.1f} img/s, reduced decode {reduced_ips:.1f} img/s, "
            f"pipeline {pipeline_ips:.1f} img/s"
        )

        one_worker = time_workers(paths, 1, num_repeats)
        two_workers = time_workers(paths, 2, num_repeats)
        print(
            f"processes: 1 worker {num_images / one_worker:.1f} img/s, 2 workers {num_images / two_workers:.1f} img/s"
        )

    result = {
        "pipeline_ips_per_core": round(pipeline_ips, 2),
        "decode_only_ips_per_core": round(decode_ips, 2),
        "reduced_decode_ips_per_core": round(reduced_ips, 2),
        "ratio_to_decode": round(pipeline_ips / decode_ips, 3),
        "ratio_to_reduced_decode": round(pipeline_ips / reduced_ips, 3),
        "scaling_2_vs_1": round(one_worker / two_workers, 3),
        "num_images": num_images,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
