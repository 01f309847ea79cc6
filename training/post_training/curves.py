"""RL curves a person reads: one panel per metric against the step, as PNG (the CSVs and TensorBoard scalars come
from ``training.metrics.MetricsWriter``)."""

from __future__ import annotations

import pathlib

import matplotlib.pyplot as plt
import numpy as np

from training.metrics import read_metrics, save_figure  # selects matplotlib's Agg backend: files only


def plot_curves(
    csv_path: str | pathlib.Path, png_path: str | pathlib.Path, keys: list[str], *, title: str = ""
) -> pathlib.Path:
    """One panel per column in ``keys`` (those present in the CSV) against ``step``; written as a PNG."""
    rows = read_metrics(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} holds no metrics yet")
    present = [key for key in keys if key in rows[0] and any(row[key] not in ("", None) for row in rows)]
    if not present:
        raise ValueError(f"{csv_path} has none of the columns {keys}")
    figure, axes = plt.subplots(len(present), 1, figsize=(7, 2.4 * len(present)), dpi=100, squeeze=False)
    for axis, key in zip(axes[:, 0], present, strict=True):
        points = [(int(row["step"]), float(row[key])) for row in rows if row[key] not in ("", None)]
        steps, values = np.array(points).T
        axis.plot(steps, values, color="#1F4E79", linewidth=1.5, marker="o" if len(points) < 30 else None)
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    if title:
        axes[0, 0].set_title(title)
    return save_figure(figure, png_path)
