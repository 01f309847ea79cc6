"""A checkpoint written by ``jobs/pretrain.py``, served by ``jobs/serve.py``, gives the sampler's own image."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
import requests

from pipelines.sample_data import encoded_sample_table
from pipelines.store.writer import commit_table

from .conftest import decode_png, free_port

REPO = pathlib.Path(__file__).resolve().parents[2]
REQUEST = {"prompt": "a red apple on a table", "size": "64x64", "num_inference_steps": 3, "seed": 7}


def load_job(name: str):
    """A job script as a module (``jobs/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(ray_session, tmp_path_factory) -> str:
    """Two steps of the demo recipe; a high learning rate so that the weights move away from the preset's."""
    store = tmp_path_factory.mktemp("serve_store")
    commit_table(store, encoded_sample_table(16, seed=5))
    overrides = [f"store_dir={store}", f"output_dir={tmp_path_factory.mktemp('serve_pretrain')}", "batch_size=2"]
    overrides += ["optim.lr=0.01", "optim.warmup_steps=0", "samples.every_steps=0"]
    argv = ["--config", str(REPO / "configs" / "pretrain_tiny.yaml"), "--max-steps", "2", *overrides]
    return load_job("pretrain").main(argv)["checkpoint"]


@pytest.fixture(scope="module")
def server(checkpoint):
    from ray import serve

    yield load_job("serve").main(["--checkpoint", checkpoint, "--host", "127.0.0.1", "--port", str(free_port())])
    serve.shutdown()


def test_serves_trained_checkpoint(server, checkpoint):
    from models.generation import TextToImage

    response = requests.post(f"{server}/v1/images/generations", json=REQUEST, timeout=120)
    assert response.status_code == 200, response.text
    served = decode_png(response.json()["data"][0]["b64_json"])
    call = {"height": 64, "width": 64, "num_steps": 3, "seeds": [7]}  # true CFG 4.0 and " ": the config's defaults
    direct = TextToImage.from_checkpoint(checkpoint)([REQUEST["prompt"]], **call)[0]
    assert served.shape == direct.shape == (64, 64, 3)
    assert np.abs(served.astype(int) - direct.astype(int)).max() <= 1
    preset = TextToImage.from_preset("tiny")([REQUEST["prompt"]], **call)[0]
    assert np.abs(served.astype(int) - preset.astype(int)).max() > 1  # the checkpoint, not the preset, is served
