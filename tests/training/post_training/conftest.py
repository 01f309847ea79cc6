"""Fixtures for the fine-tuning tests: the tiny transformer as a checkpoint folder, and encoded prompts."""

from __future__ import annotations

import pytest

from models.checkpoint import save_components
from models.presets import build_components


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models' ops are too small to gain from threads, and on a shared 2-core machine two threads per
    process lose to contention: one thread per test, restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """The tiny preset's transformer (seed 0) saved as a training checkpoint is: ``model_index.json`` +
    ``transformer/`` only."""
    folder = tmp_path_factory.mktemp("tiny_checkpoint") / "model"
    save_components(folder, build_components("tiny", parts=("transformer",)))
    return str(folder)


@pytest.fixture(scope="session")
def color_prompts(tiny_components):
    """Two prompts naming colours, encoded with the tiny condition encoder."""
    from models.condition_encoder import ConditionEncoder

    texts = ["a red square", "a blue circle"]
    encoder = ConditionEncoder(tiny_components.text_encoder, tiny_components.tokenizer)
    return texts, encoder.encode(texts)
