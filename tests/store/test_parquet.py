"""Parquet reads start only the footer readers their files need."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from store.parquet import NUM_ACTORS_ENV, count_parquet_files, footer_actors, read_parquet


def test_footer_readers_follow_the_number_of_files(monkeypatch):
    monkeypatch.delenv(NUM_ACTORS_ENV, raising=False)
    assert [footer_actors(n) for n in (0, 1, 10, 11, 95, 10_000)] == [1, 1, 1, 2, 10, 32]
    monkeypatch.setenv(NUM_ACTORS_ENV, "4")  # an operator's setting stays the ceiling
    assert footer_actors(10_000) == 4 and footer_actors(3) == 1


def test_read_parquet_starts_one_footer_reader(ray_session, tmp_path):
    from ray.util.state import list_actors

    def footer_readers() -> int:
        return sum(row.class_name == "FooterReader" for row in list_actors(limit=10_000, raise_on_missing_output=False))

    for index in range(3):
        pq.write_table(pa.table({"x": [index] * 4}), tmp_path / f"{index}.parquet")
    (tmp_path / "part").mkdir()
    pq.write_table(pa.table({"x": [3]}), tmp_path / "part" / "3.parquet")
    assert count_parquet_files(tmp_path) == 4 and count_parquet_files([tmp_path / "0.parquet"]) == 1
    before = footer_readers()
    rows = read_parquet(tmp_path).take_all()
    assert sorted(row["x"] for row in rows) == [0] * 4 + [1] * 4 + [2] * 4 + [3]
    assert footer_readers() - before == 1  # Ray's default starts 32
    assert NUM_ACTORS_ENV not in os.environ  # the variable is put back as it was
