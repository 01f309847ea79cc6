"""Checkpoints: the diffusers layout with safetensors, loadable by diffusers offline; clear errors when incomplete."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import QwenImagePipeline

from models.checkpoint import load_checkpoint, read_metadata, save_components
from models.generation import TextToImage
from models.presets import Components, MissingWeightsError, build_components, missing_parts


def test_checkpoint_loads_in_diffusers(tiny_components, tmp_path):
    folder = save_components(tmp_path / "ckpt", tiny_components, metadata={"step": 12})
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert "model_index.json" in files
    for part in ("transformer", "vae", "text_encoder"):
        assert any(f.startswith(f"{part}/") and f.endswith(".safetensors") for f in files), files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for f in files), files
    assert read_metadata(folder) == {
        "preset": "tiny",
        "parts": ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"],
        "step": 12,
    }

    pipe = QwenImagePipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        "a yellow taxi",
        negative_prompt=" ",
        height=64,
        width=64,
        num_inference_steps=3,
        true_cfg_scale=4.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    ours = TextToImage(tiny_components)(
        ["a yellow taxi"],
        height=64,
        width=64,
        num_steps=3,
        true_cfg_scale=4.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1

    # And back through our own loader: identical weights.
    reloaded = load_checkpoint(folder)
    assert reloaded.preset == "tiny"
    for name, tensor in tiny_components.transformer.state_dict().items():
        assert torch.equal(tensor, reloaded.transformer.state_dict()[name]), name


def test_partial_checkpoint_and_atomic_replace(tiny_components, tmp_path):
    only_transformer = Components(preset="tiny", transformer=tiny_components.transformer)
    folder = save_components(tmp_path / "step-1", only_transformer)
    assert sorted(p.name for p in folder.iterdir()) == ["model_index.json", "transformer"]
    assert "vae" not in json.loads((folder / "model_index.json").read_text())
    loaded = load_checkpoint(folder, parts=("transformer",))
    assert loaded.vae is None and loaded.transformer is not None
    # Saving again replaces the folder whole and leaves no temporary folders behind.
    save_components(folder, only_transformer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]


def test_missing_weights_folder_error(tiny_components, tmp_path):
    folder = save_components(tmp_path / "qwen-image", tiny_components)
    shutil.rmtree(folder / "vae")
    (folder / "scheduler" / "scheduler_config.json").unlink()
    for weights in (folder / "transformer").glob("*.safetensors"):
        weights.unlink()

    with pytest.raises(MissingWeightsError) as error:
        build_components("qwen-image", weights_dir=folder)
    message = str(error.value)
    assert "vae/" in message and "scheduler/scheduler_config.json" in message
    assert "transformer/*.safetensors" in message
    assert "text_encoder" not in message.split("missing:")[1]  # complete parts are not blamed

    assert missing_parts(folder, parts=("text_encoder", "tokenizer")) == []
    with pytest.raises(MissingWeightsError, match="does not exist"):
        build_components("qwen-image", weights_dir=tmp_path / "nowhere")
    with pytest.raises(MissingWeightsError, match="weights_dir"):
        build_components("qwen-image")
    with pytest.raises(ValueError, match="unknown preset"):
        build_components("qwen-image-xl")


def test_generation_from_a_partial_checkpoint(tiny_components, tmp_path):
    # A trainer saves only the transformer; generation takes the other parts from the preset.
    folder = save_components(tmp_path / "step", Components(preset="tiny", transformer=tiny_components.transformer))
    ours = TextToImage.from_checkpoint(folder)
    kwargs = dict(height=32, width=32, num_steps=2, seeds=[3], true_cfg_scale=1.0)
    np.testing.assert_array_equal(ours(["a boat"], **kwargs), TextToImage(tiny_components)(["a boat"], **kwargs))
