"""Serving profiles: the memory plan of the published model per profile, refusal of what cannot fit, placements that
give the same images, and the condition encoder without its language-model head. No Serve application needed."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from models.config import ConfigError
from serving.config import ModelSettings, load_serve_file
from serving.generator import load_model, warm_up
from serving.memory import GIB, Workload, model_plan, serve_workload

from .conftest import tiny_settings, write_adapter

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
# What each profile is written for (GiB the device reports: an 80 GB H100 shows 79.6, a 48 GB L40S 44.4, a 24 GB
# RTX 4090 23.6).
PROFILES = {"80gb": 79.0, "48gb": 44.0, "24gb": 23.0, "2gpu": 44.0}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_serving_profiles_fit_their_gpus(profile):
    served = load_serve_file(CONFIGS / f"serve_qwen_image_{profile}.yaml")
    model = served.settings.model.model_copy(update={"gpu_memory_gib": PROFILES[profile]})
    plan = model_plan(model, serve_workload(served.settings), torch.device("cuda"))
    assert plan.problems() == [], plan.lines()
    weights = {name: size for items in plan.devices.values() for name, size in items}
    # The published sizes in bf16: 40.9 GB transformer, 15.5 GB condition encoder without its head, 0.25 GB VAE.
    if "transformer" in weights:
        assert abs(weights["transformer"] / 1e9 - 40.9) < 0.1
    if "condition encoder" in weights:
        assert abs(weights["condition encoder"] / 1e9 - 15.5) < 0.1


def test_serving_profile_refuses_what_cannot_fit():
    served = load_serve_file(CONFIGS / "serve_qwen_image_80gb.yaml")
    # The 80 GB profile (everything resident) on a 48 GB GPU: refused at start, before any weight is read (the
    # weights folder does not exist here; reading it would raise MissingWeightsError instead).
    model = served.settings.model.model_copy(update={"gpu_memory_gib": 44.0, "weights_dir": "/nonexistent"})
    with pytest.raises(ConfigError) as error:
        load_model(model, serve_workload(served.settings))
    message = str(error.value)
    assert "cuda:0 needs" in message and "has 44.0 GiB" in message
    assert "transformer 38.05" in message and "condition encoder 14.43" in message
    # A batch of 8 images of 1328² decoded in one VAE call needs 23 GiB of working memory alone: the 24 GB profile
    # (blocks streamed) without tiles is refused with slicing off, and accepted with the default slices.
    small = load_serve_file(CONFIGS / "serve_qwen_image_24gb.yaml").settings.model
    small = small.model_copy(update={"gpu_memory_gib": 23.0})
    workload = Workload(images=8, pixels=1328 * 1328, text_tokens=512)
    unsliced = small.model_copy(update={"vae": {"max_batch_pixels": None, "tile_size": None}})
    plan = model_plan(ModelSettings.model_validate(unsliced.model_dump()), workload, torch.device("cuda"))
    assert plan.problems() and dict(plan.devices["cuda:0"])["working"] > 20 * GIB
    sliced = small.model_copy(update={"vae": {"tile_size": None}})
    assert (
        model_plan(ModelSettings.model_validate(sliced.model_dump()), workload, torch.device("cuda")).problems() == []
    )


def _images(model, **kwargs):
    return model(["a red circle", "two words"], height=64, width=48, num_steps=2, seeds=[1, 2], **kwargs)


def test_placements_give_the_same_images(tmp_path):
    """Every placement on the CPU runs its own code path (moves around each model's part, diffusers' group offload
    hooks on the transformer blocks, a LoRA adapter loaded into offloaded blocks) and must not change a pixel."""
    settings = tiny_settings().model
    resident = load_model(settings)
    expected = _images(resident)
    assert isinstance(resident.components.text_encoder.lm_head, torch.nn.Module)
    with pytest.raises(RuntimeError, match="without its language-model head"):
        resident.components.text_encoder.lm_head(torch.zeros(1, 64))
    for placement in ("model_offload", "encoder_on_cpu", "block_offload"):
        model = load_model(settings.model_copy(update={"placement": placement}))
        assert np.array_equal(_images(model), expected), placement
    adapter = {"name": "style", "path": write_adapter(tmp_path, seed=3, targets=["to_q", "to_v"])}
    with_adapter = [
        load_model(
            ModelSettings.model_validate({**settings.model_dump(), "placement": placement, "adapters": [adapter]})
        )
        for placement in ("resident", "block_offload")
    ]
    for model in with_adapter:
        model.use_adapter("style")
    adapted = _images(with_adapter[0])
    assert not np.array_equal(adapted, expected) and np.array_equal(_images(with_adapter[1]), adapted)


def test_warm_up_runs_generation_and_edit():
    settings = tiny_settings()
    model = load_model(settings.model)
    assert warm_up(model, settings) > 0
    assert ModelSettings().resolved_dtype("cuda") == "bfloat16" and ModelSettings().resolved_dtype("cpu") == "float32"
