"""The funnel report: what each operator dropped, where its threshold sits, and how many samples survive each stage.

Written next to the curation output as ``funnel.json`` (numbers), ``funnel.html`` (a page a person reads) and PNGs
(one histogram per checked score with its thresholds marked, and the survivors per stage). Computed from stored
score columns only, so it can be re-run with new thresholds without touching an image.
"""

from __future__ import annotations

import collections
import html
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.operators.base import NUM_STAGES, Check  # noqa: E402
from pipelines.operators.stage import check_masks, compute_stage, first_drop_reason  # noqa: E402
from store import columns as C  # noqa: E402

# Categorical columns summarised in the report when present.
BREAKDOWN_COLUMNS: tuple[str, ...] = (C.SOURCE, C.TEXT_LANGUAGE, C.CATEGORY, C.RESOLUTION_CLASS, C.ANN_ERROR)


def funnel_summary(
    columns: Mapping[str, np.ndarray], thresholds: Any, checks: Sequence[Check]
) -> tuple[dict, np.ndarray, np.ndarray]:
    """(summary dict, stage column, drop-reason column) for a table of stored scores."""
    stage = compute_stage(columns, thresholds, checks)
    reasons = first_drop_reason(columns, thresholds, checks)
    masks = check_masks(columns, thresholds, checks)
    num_input = len(stage)
    first_reason_counts = collections.Counter(reason for reason in reasons if reason)
    per_check = []
    for check in checks:
        lower, upper = check.bounds(thresholds)
        failing = ~masks[check.name]
        # Attribution: a sample counts against the first check (in stage order) that it fails.
        first = np.array([bool(r) for r in reasons]) & failing
        earlier = [
            c
            for c in checks
            if c.stage < check.stage or (c.stage == check.stage and checks.index(c) < checks.index(check))
        ]
        for other in earlier:
            first &= masks[other.name]
        per_check.append(
            {
                "name": check.name,
                "stage": check.stage,
                "column": check.column,
                "lower": lower,
                "upper": upper,
                "num_failing": int(failing.sum()),
                "num_dropped_here": int(first.sum()),
            }
        )
    summary = {
        "num_input": num_input,
        "num_kept_all_stages": int((stage == NUM_STAGES).sum()),
        "num_dropped": int(sum(first_reason_counts.values())),
        "survivors_per_stage": {f"S{s}": int((stage >= s).sum()) for s in range(1, NUM_STAGES + 1)},
        "stage_histogram": {str(s): int((stage == s).sum()) for s in range(0, NUM_STAGES + 1)},
        "drop_reasons": dict(first_reason_counts.most_common()),
        "checks": per_check,
        "breakdowns": {
            name: dict(collections.Counter(str(v) for v in columns[name]).most_common(20))
            for name in BREAKDOWN_COLUMNS
            if name in columns
        },
    }
    return summary, stage, reasons


def _histogram(path: pathlib.Path, values: np.ndarray, check: dict) -> bool:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return False
    figure, axis = plt.subplots(figsize=(5, 3), dpi=100)
    unique = np.unique(finite)
    axis.hist(finite, bins=min(50, max(2, unique.size)), color="#4C72B0")
    for bound, style in ((check["lower"], "--"), (check["upper"], ":")):
        if bound is not None and math.isfinite(bound):
            axis.axvline(bound, color="#C44E52", linestyle=style, linewidth=2, label=f"threshold {bound:g}")
    axis.set_title(f"S{check['stage']} {check['name']}: {check['num_failing']} of {values.size} fail", fontsize=9)
    axis.set_xlabel(check["column"], fontsize=8)
    axis.set_ylabel("samples", fontsize=8)
    if check["lower"] is not None or check["upper"] is not None:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def _stage_chart(path: pathlib.Path, summary: dict) -> None:
    figure, axis = plt.subplots(figsize=(6, 3), dpi=100)
    stages = ["input", *summary["survivors_per_stage"].keys()]
    counts = [summary["num_input"], *summary["survivors_per_stage"].values()]
    axis.bar(stages, counts, color="#55A868")
    for index, count in enumerate(counts):
        axis.text(index, count, str(count), ha="center", va="bottom", fontsize=8)
    axis.set_title("samples surviving each stage", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_funnel_report(
    output_dir: str | pathlib.Path,
    columns: Mapping[str, np.ndarray],
    thresholds: Any,
    checks: Sequence[Check],
    notes: Mapping[str, str] | None = None,
) -> dict:
    """Write ``funnel.json``, ``funnel.html`` and the PNGs under ``output_dir/funnel``; returns the summary.

    ``notes`` (operator -> why it did not run) go into the summary as ``disabled`` and at the top of the page."""
    output_dir = pathlib.Path(output_dir)
    folder = output_dir / "funnel"
    folder.mkdir(parents=True, exist_ok=True)
    summary, _, _ = funnel_summary(columns, thresholds, checks)
    _stage_chart(folder / "stages.png", summary)
    for check in summary["checks"]:
        name = f"hist_{check['name']}.png"
        if _histogram(folder / name, np.asarray(columns[check["column"]], dtype=np.float64), check):
            check["histogram"] = f"funnel/{name}"
    summary["disabled"] = dict(notes or {})
    summary["thresholds"] = thresholds.model_dump() if hasattr(thresholds, "model_dump") else str(thresholds)
    (output_dir / "funnel.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (output_dir / "funnel.html").write_text(_html(summary))
    return summary


def _html(summary: dict) -> str:
    rows = "".join(
        f"<tr><td>S{c['stage']}</td><td>{html.escape(c['name'])}</td><td>{html.escape(c['column'])}</td>"
        f"<td>{'' if c['lower'] is None else c['lower']}</td><td>{'' if c['upper'] is None else c['upper']}</td>"
        f"<td>{c['num_failing']}</td><td>{c['num_dropped_here']}</td></tr>"
        for c in summary["checks"]
    )
    reasons = "".join(f"<tr><td>{html.escape(r)}</td><td>{n}</td></tr>" for r, n in summary["drop_reasons"].items())
    images = "".join(
        f'<figure><img src="{c["histogram"]}" alt="{html.escape(c["name"])}"></figure>'
        for c in summary["checks"]
        if "histogram" in c
    )
    disabled = "".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(note)}</li>"
        for name, note in summary.get("disabled", {}).items()
    )
    disabled = f"<h2>Not run</h2><ul>{disabled}</ul>" if disabled else ""
    breakdowns = "".join(
        f"<h3>{html.escape(name)}</h3><table>"
        + "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in counts.items())
        + "</table>"
        for name, counts in summary["breakdowns"].items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Curation funnel</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}figure{{display:inline-block;margin:4px}}</style></head>
<body><h1>Curation funnel</h1>
<p>{summary["num_input"]} samples in; {summary["num_kept_all_stages"]} pass every stage; {summary["num_dropped"]} dropped
with a reason.</p>
{disabled}
<img src="funnel/stages.png" alt="survivors per stage">
<h2>Checks</h2><table><tr><th>stage</th><th>check</th><th>score</th><th>min</th><th>max</th><th>failing</th>
<th>dropped here first</th></tr>{rows}</table>
<h2>Drop reasons</h2><table><tr><th>reason</th><th>samples</th></tr>{reasons}</table>
<h2>Score histograms</h2>{images}
<h2>Breakdowns</h2>{breakdowns}
</body></html>
"""
