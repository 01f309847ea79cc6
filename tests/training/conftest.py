"""A small real latent store for the consumer tests, at two resolutions."""

from __future__ import annotations

import pytest

from pipelines.sample_data import encoded_sample_table
from pipelines.store.writer import commit_table

RESOLUTIONS = (256, 384)


def encode_rows(num_samples: int, seed: int, source: str = "sample"):
    return encoded_sample_table(num_samples, seed, resolutions=RESOLUTIONS, source=source)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("store")
    commit_table(folder, encode_rows(40, seed=11))
    return str(folder)
