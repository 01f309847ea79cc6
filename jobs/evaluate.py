"""Evaluation job: VAE reconstruction, character and text accuracy, CLIP score for each model (docs/qwen_image.md §9).

    python jobs/evaluate.py --config configs/evaluate_tiny.yaml
    python jobs/evaluate.py --config configs/evaluate_tiny.yaml --limit 2                      # smoke run
    python jobs/evaluate.py --config configs/evaluate_tiny.yaml \\
        'models=[{name: tiny}, {name: trained, checkpoint: outputs/pretrain/tiny/ray/.../model}]'

Connects to ``RAY_ADDRESS`` when set, else starts a local Ray. Writes ``<output_dir>/results.json`` (and one JSON per
model), ``comparison.md`` (one row per model), ``grids/*.png`` and the Parquet rows under ``rows/`` (``rows/<model>/vae/``
and ``rows/generation/``, every model's generations with their ``model``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.config import load_config  # noqa: E402
from models.ray_runtime import init_ray  # noqa: E402
from training.evaluation.config import EvaluateConfig  # noqa: E402
from training.evaluation.run import run_evaluation  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML with EvaluateConfig keys (configs/evaluate_*.yaml)")
    parser.add_argument("--limit", type=int, help="smoke run: at most this many items per task")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for sections)")
    args = parser.parse_args(argv)
    config = load_config(EvaluateConfig, args.config, args.overrides)
    if args.limit:
        config = config.limit(args.limit)
    init_ray()
    summary = run_evaluation(config)
    print("[evaluate] done:\n" + json.dumps(summary, indent=2), flush=True)
    return summary


if __name__ == "__main__":
    main()
