"""Metrics files: every metric a job reports reaches its CSV, across new columns and resumed runs."""

from __future__ import annotations

from training.metrics import MetricsWriter, read_metrics


def test_metrics_csv_keeps_every_metric(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write({"step": 1, "phase": "p", "loss": 0.5})
    writer.write({"step": 2, "phase": "p", "loss": 0.4, "l1": 0.2, "perceptual": 0.1})  # new keys mid-run
    writer.close()
    resumed = MetricsWriter(tmp_path)  # a restarted job appends under the header it wrote
    resumed.write({"step": 3, "loss": 0.3, "perceptual": 0.05, "grad_norm": 1.5})
    resumed.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["step", "phase", "loss", "l1", "perceptual", "grad_norm"]
    assert [row["step"] for row in rows] == ["1", "2", "3"]
    assert [row["l1"] for row in rows] == ["", "0.2", ""]
    assert [row["perceptual"] for row in rows] == ["", "0.1", "0.05"]
    assert [row["grad_norm"] for row in rows] == ["", "", "1.5"]
    assert rows[2]["phase"] == ""
    assert [path.name for path in tmp_path.iterdir() if path.suffix == ".csv"] == ["metrics.csv"]
