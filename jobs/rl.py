"""Fine-tuning job: DPO or GRPO from a checkpoint (docs/qwen_image.md §5, §8), on Ray. SFT is a pretraining recipe:
``python jobs/pretrain.py --config configs/sft_tiny.yaml init=<pretraining run folder or export>``.

    python jobs/rl.py --algo dpo --config configs/rl_dpo_tiny.yaml init=... beta=500
    python jobs/rl.py --algo grpo --config configs/rl_grpo_tiny.yaml init=... --max-steps 2   # smoke run
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/rl.py --algo grpo --config my_grpo.yaml num_workers=8 use_gpu=true num_rollout_actors=8

Connects to ``RAY_ADDRESS`` when set (as under ``ray job submit``), else starts a local Ray. Prints where the
checkpoints (diffusers layout), the metrics CSV and the loss / reward curves (PNG) are. Running it again with the
same ``output_dir`` and ``run_name`` resumes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.config import load_config  # noqa: E402
from models.ray_runtime import init_ray  # noqa: E402
from training.post_training.config import DpoConfig, GrpoConfig  # noqa: E402

ALGORITHMS = {"dpo": DpoConfig, "grpo": GrpoConfig}
# The config key --max-steps caps, per algorithm.
STEP_KEYS = {"dpo": "num_steps", "grpo": "num_iterations"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--algo",
        required=True,
        choices=sorted(ALGORITHMS),
        help="SFT is a recipe of jobs/pretrain.py (configs/sft_tiny.yaml)",
    )
    parser.add_argument("--config", help="YAML recipe (configs/rl_<algo>_*.yaml)")
    parser.add_argument("--max-steps", type=int, help="smoke run: at most this many steps (GRPO: iterations)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for sections)")
    args = parser.parse_args(argv)
    config = load_config(ALGORITHMS[args.algo], args.config, args.overrides)
    if args.max_steps:
        key = STEP_KEYS[args.algo]
        config = config.model_copy(update={key: min(getattr(config, key), args.max_steps)})
    init_ray()
    if args.algo == "dpo":
        from training.post_training.dpo_train import run_dpo as run
    else:
        from training.post_training.grpo_train import run_grpo as run
    summary = run(config)
    print(f"[{args.algo}] done:\n" + json.dumps(summary, indent=2, default=str), flush=True)
    return summary


if __name__ == "__main__":
    main()
