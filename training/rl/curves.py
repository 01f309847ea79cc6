"""RL metrics a person reads: a CSV with the algorithm's own columns, TensorBoard scalars, and curves as PNG.

``training.metrics.MetricsWriter`` keeps pretraining's fixed columns; RL logs rewards, margins and accuracies, so
this writer takes its columns from the first row it is given.
"""

from __future__ import annotations

import csv
import pathlib

import matplotlib.pyplot as plt
import numpy as np

from training.metrics import read_metrics, save_figure  # selects matplotlib's Agg backend: files only


class CurveWriter:
    """Appends rows to ``<folder>/<name>.csv`` (columns fixed by the first row) and TensorBoard scalars."""

    def __init__(self, folder: str | pathlib.Path, name: str = "metrics"):
        self.folder = pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / f"{name}.csv"
        self.name = name
        self._file = None
        self._csv = None
        try:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.folder / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX comes with ray[train]
            self._tensorboard = None

    def write(self, row: dict) -> None:
        if self._csv is None:
            fields = list(row)
            if self.csv_path.exists():  # a resumed run appends under the header it wrote
                with open(self.csv_path, newline="") as handle:
                    fields = next(csv.reader(handle), fields)
            new = not self.csv_path.exists()
            self._file = open(self.csv_path, "a", newline="")  # noqa: SIM115 - closed in close()
            self._csv = csv.DictWriter(self._file, fieldnames=fields, extrasaction="ignore")
            if new:
                self._csv.writeheader()
        self._csv.writerow(row)
        self._file.flush()
        if self._tensorboard is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self._tensorboard.add_scalar(f"{self.name}/{key}", value, row["step"])
            self._tensorboard.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


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
