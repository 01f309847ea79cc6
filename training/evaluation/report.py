"""Aggregating the Parquet rows into results: per-model JSON, one markdown comparison table, grids, a bar chart.

Means are over rows (each image or prompt counts once); a figure a model has no rows for is written as ``n/a``.
"""

from __future__ import annotations

import json
import math
import pathlib

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from models.imageio import save_png, to_grid  # noqa: E402
from store import columns as C  # noqa: E402
from training.evaluation.config import EvaluateConfig, ModelSpec  # noqa: E402
from training.evaluation.stages import JUDGED, ORDINARY, TEXT_SETS  # noqa: E402
from training.evaluation.text_accuracy import CHARS, SCENES, TEXT_EN, TEXT_ZH  # noqa: E402

SCALARS_VAE = [C.EVAL_SET, C.EVAL_INDEX, C.EVAL_PSNR, C.EVAL_SSIM, C.EVAL_OCR_EDIT]
SCALARS_GEN = [C.EVAL_TASK, C.EVAL_GROUP, C.EVAL_PROMPT, C.EVAL_EXPECTED, C.EVAL_READ, C.EVAL_SCORE, C.EVAL_CLIP_SCORE]
SCENE_COLUMNS = [C.judge_column(name) for name in JUDGED]
# docs/qwen_image.md §9 numbers, printed under the table for comparison.
PUBLISHED = (
    "Published (docs/qwen_image.md §9): Qwen-Image-VAE 33.42 / 0.9159 (ImageNet), 36.63 / 0.9839 (text-rich); "
    "ChineseWord Qwen-Image 97.29 / 40.53 / 6.48; LongText-Bench EN 0.943 / ZH 0.946."
)


def _mean(values) -> float | None:
    finite = [float(value) for value in values if value is not None and not math.isnan(float(value))]
    return sum(finite) / len(finite) if finite else None


def _decode_png(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _thumbs(images: list[np.ndarray], size: int = 128) -> np.ndarray:
    return np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) for image in images])


def vae_results(folder: pathlib.Path, grids: pathlib.Path, name: str, columns: int) -> dict:
    table = pq.read_table(folder, columns=SCALARS_VAE).to_pydict()
    results = {}
    for set_name in (*TEXT_SETS, ORDINARY):
        rows = [i for i, value in enumerate(table[C.EVAL_SET]) if value == set_name]
        results[set_name] = {
            "num_images": len(rows),
            "psnr": _mean(table[C.EVAL_PSNR][i] for i in rows),
            "ssim": _mean(table[C.EVAL_SSIM][i] for i in rows),
        }
    results["ocr_edit_text"] = _mean(table[C.EVAL_OCR_EDIT])
    # The grid: originals above their reconstructions, the first ``columns`` of each set (only those are read back).
    shown = pq.read_table(
        folder,
        columns=[C.EVAL_SET, C.EVAL_INDEX, C.EVAL_IMAGE_PNG, C.EVAL_RECONSTRUCTION_PNG],
        filters=[(C.EVAL_INDEX, "<", columns)],
    ).to_pydict()
    order = sorted(range(len(shown[C.EVAL_SET])), key=shown[C.EVAL_INDEX].__getitem__)
    picks = [i for name in (*TEXT_SETS, ORDINARY) for i in order if shown[C.EVAL_SET][i] == name]
    if picks:
        cells, labels = [], []
        for start in range(0, len(picks), columns):
            chunk = picks[start : start + columns]
            cells += [_decode_png(shown[C.EVAL_IMAGE_PNG][i]) for i in chunk]
            cells += [_decode_png(shown[C.EVAL_RECONSTRUCTION_PNG][i]) for i in chunk]
            labels += [f"{shown[C.EVAL_SET][i]} original" for i in chunk] + ["reconstruction"] * len(chunk)
        path = save_png(to_grid(_thumbs(cells), columns=columns, labels=labels), grids / f"{name}_vae.png")
        results["grid"] = str(path)
    return results


def generation_results(folder: pathlib.Path, grids: pathlib.Path, name: str, columns: int) -> dict:
    """Model ``name``'s generation rows of ``folder`` (the rows of every model, told apart by their ``model``)."""
    mine = [(C.EVAL_MODEL, "=", name)]
    names = pq.read_schema(next(pathlib.Path(folder).glob("*.parquet"))).names
    table = pq.read_table(folder, columns=[name for name in SCALARS_GEN if name in names], filters=mine).to_pydict()
    if not table[C.EVAL_TASK]:
        raise ValueError(f"{folder} holds no generation rows of model {name!r}")
    rows = range(len(table[C.EVAL_TASK]))
    chars = {}
    for tier in dict.fromkeys(table[C.EVAL_GROUP][i] for i in rows if table[C.EVAL_TASK][i] == CHARS):
        scores = [
            table[C.EVAL_SCORE][i] for i in rows if table[C.EVAL_TASK][i] == CHARS and table[C.EVAL_GROUP][i] == tier
        ]
        chars[tier] = {"accuracy": _mean(scores), "num_prompts": len(scores)}
    text = {}
    for task, language in ((TEXT_EN, "en"), (TEXT_ZH, "zh")):
        scores = [table[C.EVAL_SCORE][i] for i in rows if table[C.EVAL_TASK][i] == task]
        text[language] = {"accuracy": _mean(scores), "num_prompts": len(scores)}
    # None: no CLIP model configured.
    clip_score = _mean(table[C.EVAL_CLIP_SCORE]) if C.EVAL_CLIP_SCORE in table else None
    results = {"chars": chars, "text": text, "clip_score": clip_score, "num_images": len(rows)}
    results["scenes"] = scene_results(folder, grids, name, columns)
    images = pq.read_table(
        folder,
        columns=[C.EVAL_TASK, C.EVAL_INDEX, C.EVAL_EXPECTED, C.EVAL_READ, C.EVAL_IMAGE_PNG],
        filters=[*mine, (C.EVAL_INDEX, "<", columns)],
    ).to_pydict()
    grid_rows = []
    for task in (CHARS, TEXT_EN, TEXT_ZH):
        grid_rows += sorted(
            (i for i in range(len(images[C.EVAL_TASK])) if images[C.EVAL_TASK][i] == task),
            key=images[C.EVAL_INDEX].__getitem__,
        )
    if grid_rows:
        cells = _thumbs([_decode_png(images[C.EVAL_IMAGE_PNG][i]) for i in grid_rows])
        labels = [f"{images[C.EVAL_EXPECTED][i]} -> {images[C.EVAL_READ][i] or '∅'}" for i in grid_rows]
        results["grid"] = str(save_png(to_grid(cells, columns=columns, labels=labels), grids / f"{name}_text.png"))
    return results


def scene_results(folder: pathlib.Path, grids: pathlib.Path, name: str, columns: int) -> dict | None:
    """The judge's accuracy per attribute and overall on the shape-scene prompts, and a grid of the first images
    with each prompt and its verdict; None when the run had no scene prompts."""
    mine = [(C.EVAL_MODEL, "=", name), (C.EVAL_TASK, "=", SCENES)]
    table = pq.read_table(folder, columns=[C.EVAL_TASK, C.EVAL_SCORE, *SCENE_COLUMNS], filters=mine)
    if table.num_rows == 0:
        return None
    values = table.to_pydict()
    results = {attribute: _mean(values[C.judge_column(attribute)]) for attribute in JUDGED}
    results.update({"overall": _mean(values[C.EVAL_SCORE]), "num_prompts": table.num_rows})
    shown = pq.read_table(
        folder,
        columns=[C.EVAL_INDEX, C.EVAL_PROMPT, C.EVAL_READ, C.EVAL_SIZE, C.EVAL_IMAGE_PNG],
        filters=[*mine, (C.EVAL_INDEX, "<", 4 * columns)],
    ).to_pydict()
    order = sorted(range(len(shown[C.EVAL_INDEX])), key=shown[C.EVAL_INDEX].__getitem__)
    if order:
        cells = _thumbs([_decode_png(shown[C.EVAL_IMAGE_PNG][i]) for i in order], size=160)
        labels = [f"{shown[C.EVAL_PROMPT][i]}\n{shown[C.EVAL_READ][i]}" for i in order]
        grid = to_grid(cells, columns=columns, labels=labels, label_lines=5)
        results["grid"] = str(save_png(grid, grids / f"{name}_scenes.png"))
    return results


def model_results(
    spec: ModelSpec, vae_folder: pathlib.Path | None, gen_folder: pathlib.Path, output: pathlib.Path, columns: int
) -> dict:
    grids = output / "grids"
    results = {"model": spec.model_dump(mode="json")}
    if vae_folder is not None:
        results["vae"] = vae_results(vae_folder, grids, spec.name, columns)
    results.update(generation_results(gen_folder, grids, spec.name, columns))
    path = output / "results" / f"{spec.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return results


def _pair(entry: dict | None) -> str:
    if not entry or entry.get("psnr") is None:
        return "n/a"
    return f"{entry['psnr']:.2f} / {entry['ssim']:.4f}"


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def comparison_table(results: dict[str, dict], tiers: list[str]) -> str:
    """One row per model: VAE PSNR / SSIM (text EN, text ZH, ordinary), OCR edit of reconstructions, character
    accuracy per tier, EN / ZH text accuracy, CLIP score, and the judge's accuracies on shape scenes; a column
    appears when the run measured it for at least one model ("n/a" where a model has no value)."""
    columns = [
        ("VAE text EN PSNR / SSIM", lambda result: _pair(result.get("vae", {}).get("text_en"))),
        ("VAE text ZH PSNR / SSIM", lambda result: _pair(result.get("vae", {}).get("text_zh"))),
        ("VAE ordinary PSNR / SSIM", lambda result: _pair(result.get("vae", {}).get(ORDINARY))),
        (
            "OCR edit recon vs orig (lower is better)",
            lambda result: _number(result.get("vae", {}).get("ocr_edit_text")),
        ),
        *[
            (f"chars {tier}", lambda result, tier=tier: _number(result["chars"].get(tier, {}).get("accuracy")))
            for tier in tiers
        ],
        ("text EN", lambda result: _number(result["text"]["en"]["accuracy"])),
        ("text ZH", lambda result: _number(result["text"]["zh"]["accuracy"])),
        ("CLIP score", lambda result: _number(result["clip_score"], 2)),
        *[
            (
                "scenes colour" if key == JUDGED[0] else "all" if key == "overall" else key,
                lambda result, key=key: _number((result.get("scenes") or {}).get(key)),
            )
            for key in (*JUDGED, "overall")
        ],
    ]
    cells = {name: [cell(result) for _, cell in columns] for name, result in results.items()}
    shown = [i for i in range(len(columns)) if any(row[i] != "n/a" for row in cells.values())]
    header = ["model", *[columns[i][0] for i in shown]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in cells.items():
        lines.append("| " + " | ".join([name, *[row[i] for i in shown]]) + " |")
    return "\n".join(lines) + "\n"


def tier_chart(results: dict[str, dict], tiers: list[str], path: pathlib.Path) -> pathlib.Path:
    """Character accuracy per tier, one bar per model."""
    figure, axis = plt.subplots(figsize=(7, 3.5), dpi=100)
    width = 0.8 / max(1, len(results))
    for number, (name, result) in enumerate(results.items()):
        values = [result["chars"].get(tier, {}).get("accuracy") or 0.0 for tier in tiers]
        axis.bar(np.arange(len(tiers)) + number * width, values, width, label=name)
    axis.set_xticks(np.arange(len(tiers)) + width * (len(results) - 1) / 2, tiers)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("character accuracy (OCR)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def write_report(results: dict[str, dict], config: EvaluateConfig, output: pathlib.Path) -> dict:
    tiers = list(config.chars.tiers)
    table = comparison_table(results, tiers)
    parts = []
    if config.vae.enabled:
        parts.append(
            f"VAE at {config.vae.resolution}x{config.vae.resolution}: {config.vae.num_text_images} text images per "
            f"language, {config.vae.num_ordinary_images} ordinary"
        )
    parts.append(f"generation: {config.generation.num_steps} steps, true CFG {config.generation.true_cfg_scale}")
    if config.chars.num_per_tier or config.text.num_per_language or config.clip_prompts:
        parts.append(
            f"text and CLIP prompts at {config.generation.resolution}px: {config.chars.num_per_tier} characters per "
            f"tier, {config.text.num_per_language} text prompts per language, {len(config.clip_prompts)} CLIP prompts"
        )
    parts.append(f"CLIP {config.clip.model_name}" if config.clip is not None else "no CLIP score (no CLIP model)")
    settings = "; ".join(parts) + "."
    if config.scenes.num_prompts:
        settings += (
            f" Shape scenes: {config.scenes.num_prompts} prompts ({config.scenes.split} split) at "
            f"{config.scenes.resolution}px, judged per attribute (training/evaluation/judge.py)."
        )
    (output / "comparison.md").write_text(table + "\n" + settings + "\n\n" + PUBLISHED + "\n")
    (output / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    chart = tier_chart(results, tiers, output / "grids" / "char_accuracy.png")
    print(table, flush=True)
    return {
        "results": str(output / "results.json"),
        "table": str(output / "comparison.md"),
        "grids": str(output / "grids"),
        "char_chart": str(chart),
    }
