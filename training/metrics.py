"""Training metrics a person reads: a CSV, TensorBoard event files, the loss curve and sample grids as PNGs."""

from __future__ import annotations

import csv
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


class MetricsWriter:
    """Appends rows to ``<folder>/<name>.csv`` and TensorBoard scalars (tag ``<name>/<key>``) under ``folder``.

    Every key of every row reaches the CSV: a row that brings a key the file's header lacks rewrites the file under
    the wider header (metrics files are small), and earlier rows leave that column empty. A resumed run appends to
    the file it wrote before. Rank 0 alone writes.
    """

    def __init__(self, folder: str | pathlib.Path, name: str = "metrics"):
        self.folder = pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.csv_path = self.folder / f"{name}.csv"
        self.fields: list[str] = []
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as handle:
                self.fields = next(csv.reader(handle), [])
        try:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.folder / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX comes with ray[train]
            self._tensorboard = None

    def write(self, row: dict) -> None:
        new = [key for key in row if key not in self.fields]
        if new:
            self._widen(new)
        with open(self.csv_path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.fields, restval="").writerow(row)
        if self._tensorboard is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(f"{self.name}/{key}", value, row["step"])
            self._tensorboard.flush()

    def _widen(self, new: list[str]) -> None:
        """Rewrites the CSV (written so far) under a header with ``new`` appended; atomic by rename."""
        rows = read_metrics(self.csv_path) if self.fields else []
        self.fields = [*self.fields, *new]
        temporary = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        temporary.replace(self.csv_path)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def save_figure(figure: matplotlib.figure.Figure, path: str | pathlib.Path) -> pathlib.Path:
    """Lays ``figure`` out, writes it to ``path`` (a PNG; folders made as needed) and closes it; returns the path."""
    figure.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)  # pyplot keeps every open figure alive until it is closed
    return path


def read_metrics(csv_path: str | pathlib.Path) -> list[dict]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


def plot_loss_curve(csv_path: str | pathlib.Path, png_path: str | pathlib.Path) -> pathlib.Path:
    """Loss per logged step (and a running mean), phases shaded; written as a PNG."""
    rows = read_metrics(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} holds no metrics yet")
    steps = np.array([int(row["step"]) for row in rows])
    loss = np.array([float(row["loss"]) for row in rows])
    order = np.argsort(steps, kind="stable")
    steps, loss, phases = steps[order], loss[order], [rows[i]["phase"] for i in order]
    figure, axis = plt.subplots(figsize=(7, 3.5), dpi=100)
    axis.plot(steps, loss, color="#9BB7D4", linewidth=1, label="loss")
    window = max(1, len(loss) // 20)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    axis.plot(steps[window - 1 :], smooth, color="#1F4E79", linewidth=2, label=f"mean of {window}")
    for index, phase in enumerate(dict.fromkeys(phases)):
        members = [s for s, p in zip(steps, phases, strict=True) if p == phase]
        axis.axvspan(min(members), max(members), alpha=0.08 if index % 2 else 0.0, color="grey")
        axis.text(min(members), axis.get_ylim()[1], phase, fontsize=7, va="top")
    axis.set_xlabel("step")
    axis.set_ylabel("flow-matching loss")
    axis.legend(fontsize=8)
    return save_figure(figure, png_path)
