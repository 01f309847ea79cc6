"""Which held-out prompts did RL fix, and which did it break? A paired comparison of checkpoints with their start.

    python benchmarks/rl_compare.py START AFTER [AFTER ...] [--prompts 192] [--output outputs/rl_compare]

Every checkpoint draws the same held-out one-object prompts with the same seeds as ``benchmarks/learning.py``
judges RL (its ``held_out_captions`` and ``draw_held_out``: 20 steps, true CFG 4, the seed of prompt i is i), and the judge says whether each
image has every attribute right. Per checkpoint: ``fixed`` (wrong at the start, right after), ``broken`` (the
reverse) and the one-sided sign tests of that split: ``p_up``, how likely so few broken if a change were as likely
to break a prompt as to fix it, and ``p_down`` the same for so few fixed. Because the prompts and seeds are shared,
these counts say more than two accuracies each with the noise of its prompts. ``OUTPUT/<name>_changed.png``: each
changed prompt drawn by the start (left) and the checkpoint (right), captioned with the prompt and what the judge
found wrong. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sign_test(fixed: int, broken: int) -> float:
    """One-sided p-value of at most ``broken`` of ``fixed + broken`` changes going the wrong way by chance."""
    changes = fixed + broken
    return sum(math.comb(changes, k) for k in range(broken + 1)) / 2**changes if changes else 1.0


def short_verdict(verdict) -> str:
    """``all ✓``, or the attributes the image got wrong (``shape× count×``)."""
    wrong = [f"{name}×" for name, ok in verdict.scores().items() if not ok]
    return " ".join(wrong) or "all ✓"


def draw_and_judge(folder: str, captions: list[str]):
    from benchmarks.learning import draw_held_out
    from training.evaluation.judge import judge

    images = draw_held_out(folder, captions)
    return images, [judge(image, caption) for image, caption in zip(images, captions, strict=True)]


def main() -> None:
    import numpy as np

    from benchmarks.learning import held_out_captions
    from models.imageio import save_png, to_grid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("start")
    parser.add_argument("after", nargs="+")
    parser.add_argument("--prompts", type=int, default=192)
    parser.add_argument("--output", default="outputs/rl_compare")
    args = parser.parse_args()

    captions = held_out_captions(args.prompts)
    start_images, start_verdicts = draw_and_judge(args.start, captions)
    start_right = [verdict.overall for verdict in start_verdicts]
    result = {"prompts": args.prompts, "start": args.start, "start_right": sum(start_right), "checkpoints": {}}
    for folder in args.after:
        images, verdicts = draw_and_judge(folder, captions)
        right = [verdict.overall for verdict in verdicts]
        changed = [i for i in range(args.prompts) if right[i] != start_right[i]]
        fixed = sum(1 for i in changed if right[i])
        broken = len(changed) - fixed
        name = pathlib.Path(folder).parent.parent.name or pathlib.Path(folder).name  # the run's folder
        entry = {
            "checkpoint": folder,
            "right": sum(right),
            "delta_points": round(100 * (sum(right) - sum(start_right)) / args.prompts, 1),
            "fixed": fixed,
            "broken": broken,
            "p_up": round(sign_test(fixed, broken), 4),
            "p_down": round(sign_test(broken, fixed), 4),
        }
        if changed:
            tiles = np.stack([pair for i in changed for pair in (start_images[i], images[i])])
            labels = [
                label
                for i in changed
                for label in (
                    f"{captions[i]}\nstart: {short_verdict(start_verdicts[i])}",
                    f"\n{name}: {short_verdict(verdicts[i])}",
                )
            ]
            tiles = np.repeat(np.repeat(tiles, 2, axis=1), 2, axis=2)  # 128 px tiles: room for the captions
            grid = to_grid(tiles, columns=8, labels=labels, label_lines=4)
            entry["grid"] = str(save_png(grid, pathlib.Path(args.output) / f"{name}_changed.png"))
        result["checkpoints"][name] = entry
        print(f"[rl_compare] {name}: " + json.dumps(entry), flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
