"""What each scoring stage of curation costs per shape scene: the CPU operators, OCR and face detection.

    python benchmarks/scene_scoring.py [--scenes 120]

Renders the demo's corpus (``pipelines.synth.scene_corpus.scene_pairs``: 256 px one-object scenes, one in ten
damaged) and times, in this process on one thread (as a one-CPU producer actor runs), the three image-reading stages
of the scoring pass over the same bytes: ``ScoreOperators`` (decode and every operator of stages 1, 2 and 5),
``OcrScores`` with the OCR settings of ``configs/preprocess_scenes.yaml`` (detection at the scenes' 256 px) and
``FaceScores``. Each stage is built and warmed up on a few scenes first (its models loaded), then run over all of
them twice, alternating; the faster pass counts. Last line: one JSON object, milliseconds of a core per scene for
each stage and OCR's share of the three together: what switching OCR off (``ocr.enabled=false``) saves a corpus
without text.
"""

from __future__ import annotations

import os

# One thread, as Ray runs a one-CPU actor (it sets OMP_NUM_THREADS=1); set before numpy, cv2 and onnxruntime load.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import cv2

    from models.config import load_config
    from pipelines.curation import CurationConfig
    from pipelines.operators.faces import FaceScores
    from pipelines.operators.registry import ScoreOperators
    from pipelines.operators.text_ocr import OcrScores
    from pipelines.synth.scene_corpus import scene_pairs
    from store import columns as C

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=120)
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "preprocess_scenes.yaml"))
    args = parser.parse_args()
    cv2.setNumThreads(1)
    recipe = load_config(CurationConfig, args.recipe, ["output_dir=/unused", "sources=[{kind: folder, paths: [/x]}]"])
    pairs = scene_pairs(args.scenes, kinds=("one",))
    batch = {
        C.SAMPLE_ID: np.array([key for key, _, _ in pairs], dtype=object),
        C.IMAGE_BYTES: np.array([data for _, data, _ in pairs], dtype=object),
    }
    warm = {name: column[:4] for name, column in batch.items()}
    operators, ocr, faces = ScoreOperators(recipe.operators), OcrScores(recipe.ocr), FaceScores(recipe.faces)
    scored_warm = ocr(operators(warm))
    faces(scored_warm)
    seconds = {"operators": [], "ocr": [], "faces": []}
    for _ in range(2):
        started = time.perf_counter()
        scored = operators(batch)
        seconds["operators"].append(time.perf_counter() - started)
        started = time.perf_counter()
        read = ocr(scored)
        seconds["ocr"].append(time.perf_counter() - started)
        started = time.perf_counter()
        faces(read)
        seconds["faces"].append(time.perf_counter() - started)
    per_scene = {name: 1000 * min(values) / len(pairs) for name, values in seconds.items()}
    total = sum(per_scene.values())
    result = {
        "scenes": len(pairs),
        "scene_px": 256,
        "ocr_detect_short_side": recipe.ocr.ocr.detect_short_side,
        "ms_per_scene": {name: round(value, 2) for name, value in per_scene.items()},
        "ocr_share": round(per_scene["ocr"] / total, 3),
        "ocr_over_operators": round(per_scene["ocr"] / per_scene["operators"], 1),
        "ocr_over_faces": round(per_scene["ocr"] / per_scene["faces"], 1),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
