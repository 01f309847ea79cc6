"""Consumer job: progressive flow-matching pretraining from the latent store on Ray Train.

    python jobs/pretrain.py --config configs/pretrain_tiny.yaml store_dir=outputs/store
    python jobs/pretrain.py --config configs/pretrain_tiny.yaml --max-steps 20          # smoke run
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/pretrain.py --config configs/pretrain_tiny.yaml num_workers=8 use_gpu=true

Connects to ``RAY_ADDRESS`` when set (as under ``ray job submit``), else starts a local Ray. Prints where the final
checkpoint (diffusers layout), the sample grids, the metrics CSV / TensorBoard files and the loss curve are.
Running it again with the same ``output_dir`` and ``run_name`` resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.config import load_config  # noqa: E402
from models.ray_runtime import init_ray  # noqa: E402
from training.config import PretrainConfig, limit_steps  # noqa: E402
from training.pretrain import run_pretraining  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe with PretrainConfig keys (configs/pretrain_*.yaml)")
    parser.add_argument("--max-steps", type=int, help="smoke run: stop after this many steps in all")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for sections)")
    args = parser.parse_args(argv)
    config = load_config(PretrainConfig, args.config, args.overrides)
    if args.max_steps:
        config = limit_steps(config, args.max_steps)
    init_ray()
    summary = run_pretraining(config)
    print("[pretrain] done:\n" + json.dumps(summary, indent=2), flush=True)
    return summary


if __name__ == "__main__":
    main()
