"""Text-rendering synthesis throughput: images per second per core for each mode at 640x640 and 1328x1328.

Single process, single-threaded (``cv2.setNumThreads(1)``, as a 1-CPU Ray worker): each figure is the time of
``SynthGenerator.generate`` plus encoding (JPEG 95, the default) per image, after one warm-up image (fonts and
word lists load once per process). Compositional mode composites onto real-looking JPEG backgrounds passed as
bytes, so decoding the background is counted. The slowest mode is then profiled once (cProfile) and its top
entries printed before the last line, one JSON object ``{"<mode>_<size>": images per second per core}``.

Run: ``python benchmarks/synth.py`` (about a minute here) or ``--quick``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as Ray sets it for a 1-CPU worker
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.synth.config import MODES, SynthConfig  # noqa: E402
from pipelines.synth.generator import SynthGenerator  # noqa: E402
from pipelines.synth.render import encode  # noqa: E402
from pipelines.synth.sample_corpus import jpeg, photo_like  # noqa: E402

SIZES: tuple[int, ...] = (640, 1328)
NUM_BACKGROUNDS = 8


def run(generator: SynthGenerator, rows: range, backgrounds: list[bytes]) -> int:
    """Generate and encode ``rows``; returns the bytes written (so nothing is optimised away)."""
    total = 0
    for row in rows:
        background = backgrounds[row % len(backgrounds)] if generator.mode == "compositional" else None
        sample = generator.generate((row,), background)
        if sample.image is not None:
            total += len(encode(sample.image, generator.config))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images per figure")
    parser.add_argument("--profile-top", type=int, default=15, help="cProfile entries printed for the slowest mode")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    backgrounds = [jpeg(photo_like(rng, 1536, 2048)) for _ in range(NUM_BACKGROUNDS)]

    result: dict[str, float] = {}
    slowest: tuple[float, str, int] = (float("inf"), "", 0)
    for size in SIZES:
        num_images = (8 if args.quick else 24) if size < 1000 else (4 if args.quick else 12)
        for mode in MODES:
            generator = SynthGenerator(SynthConfig(resolutions=[(size, size)]), mode)
            run(generator, range(1_000_000, 1_000_001), backgrounds)  # warm-up: fonts, word lists, caches
            started = time.perf_counter()
            run(generator, range(num_images), backgrounds)
            per_second = num_images / (time.perf_counter() - started)
            result[f"{mode}_{size}"] = round(per_second, 2)
            print(f"{mode:>13} {size}x{size}: {per_second:6.2f} images/s per core ({dict(generator.stats)} discarded)")
            if size == max(SIZES) and per_second < slowest[0]:
                slowest = (per_second, mode, size)

    _, mode, size = slowest
    generator = SynthGenerator(SynthConfig(resolutions=[(size, size)]), mode)
    run(generator, range(1_000_000, 1_000_001), backgrounds)
    profiler = cProfile.Profile()
    profiler.enable()
    run(generator, range(4 if args.quick else 8), backgrounds)
    profiler.disable()
    report = io.StringIO()
    pstats.Stats(profiler, stream=report).sort_stats("tottime").print_stats(args.profile_top)
    print(f"profile of the slowest mode, {mode} at {size}x{size}:")
    print("\n".join(line for line in report.getvalue().splitlines() if line.strip()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
