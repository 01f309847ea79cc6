"""Shared pytest set-up: offline, deterministic, CPU; tiny-preset fixtures built once per session."""

from __future__ import annotations

import os

# Nothing may reach a model hub: every weight is built (tiny) or read from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests when no CUDA device is present."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is caught by the tests themselves
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_components():
    """All five parts of the tiny preset (random weights, seed 0). Tests must not modify them."""
    from models.presets import build_components

    return build_components("tiny")


@pytest.fixture(scope="session")
def tokenizer(tiny_components):
    return tiny_components.tokenizer


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting Ray costs seconds; a trainer ~25 s).

    Logical CPUs are oversubscribed (16 on 2 cores, as models.ray_runtime does) so Ray Data tasks and train workers never starve each other.
    """
    import logging

    import ray
    from ray.data import DataContext

    # Ray Data's DEBUG records (operator metrics dumps) would flood the logs pytest shows for a failing test.
    logging.getLogger("ray").setLevel(logging.INFO)

    if not ray.is_initialized():
        # address="local": never attach to another Ray that happens to run on this machine.
        ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False, configure_logging=False)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_store_dir(tmp_path_factory) -> str:
    """A small latent store from the sample corpus, encoded with the tiny VAE and condition encoder (no Ray)."""
    from pipelines.sample_data import encoded_sample_table
    from pipelines.store.writer import commit_table

    folder = tmp_path_factory.mktemp("tiny_store")
    commit_table(folder, encoded_sample_table(24, seed=21))
    return str(folder)
