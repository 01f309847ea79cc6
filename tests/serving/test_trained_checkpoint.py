"""A checkpoint written by ``jobs/pretrain.py``, served by ``jobs/serve.py``, gives the sampler's own image."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest
import requests

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
def checkpoint(pretrain_run) -> str:
    """The final checkpoint of the shared ``jobs/pretrain.py`` run of the demo recipe (tests/conftest.py)."""
    return json.loads((pathlib.Path(pretrain_run) / "summary.json").read_text())["checkpoint"]


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
