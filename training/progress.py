"""A training run's progress, shown by the driver while Ray Train runs the workers.

Workers' own output goes to Ray's log files (``models.ray_runtime``), so the driver follows the run's metrics CSV,
which rank 0 appends to at every logged step, and prints one line per new row: step out of the total, the share
done, and the metrics named in ``keys``. A line is printed at most every ``min_interval_s`` seconds, and the last
row always, so a long run shows a steady trickle, not a flood.
"""

from __future__ import annotations

import dataclasses
import pathlib
import threading
import time

from training.metrics import read_metrics


@dataclasses.dataclass(frozen=True)
class Progress:
    """What to follow: ``csv_path`` (rows with a ``step`` column), up to ``total_steps``, printed as ``[label]``."""

    csv_path: pathlib.Path
    total_steps: int
    label: str
    keys: tuple[str, ...] = ("loss",)
    min_interval_s: float = 2.0


class ProgressPrinter:
    """Context manager: a thread that prints the new rows of ``progress.csv_path`` until the context ends."""

    def __init__(self, progress: Progress, poll_s: float = 0.5):
        self.progress = progress
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"{progress.label}-progress")
        self._seen = len(self._rows())  # rows written before this run (an earlier phase or attempt)
        self._last_print = 0.0
        self._pending: dict | None = None

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._poll(final=True)

    def _rows(self) -> list[dict]:
        try:
            return read_metrics(self.progress.csv_path)
        except FileNotFoundError:
            return []

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll(final=False)

    def _poll(self, final: bool) -> None:
        rows = self._rows()
        if len(rows) > self._seen:
            self._pending = rows[-1]
            self._seen = len(rows)
        now = time.monotonic()
        if self._pending is not None and (final or now - self._last_print >= self.progress.min_interval_s):
            print(self.line(self._pending), flush=True)
            self._pending, self._last_print = None, now

    def line(self, row: dict) -> str:
        """``[label] step 50/250 (20%) loss 0.4123 ...`` for one metrics row."""
        step, total = int(row["step"]), self.progress.total_steps
        parts = [f"[{self.progress.label}] step {step}/{total} ({100 * step / max(1, total):.0f}%)"]
        for key in self.progress.keys:
            value = row.get(key, "")
            if value in ("", None):
                continue
            try:
                parts.append(f"{key} {float(value):.4g}")
            except ValueError:  # a text column (the phase's name)
                parts.append(f"{key} {value}")
        return " ".join(parts)
