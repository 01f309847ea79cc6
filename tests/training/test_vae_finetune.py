"""VAE decoder fine-tuning (docs/qwen_image.md §6): it sharpens text reconstruction and does not touch the encoder."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from models.checkpoint import read_metadata
from models.presets import build_components
from models.vae import images_to_tensor
from training.metrics import read_metrics
from training.vae_finetune import (
    DecoderOnly,
    VaeFinetuneConfig,
    build_vae,
    encode,
    encoder_state,
    reconstruct,
    reconstruction_scores,
    train_images,
    train_steps,
    trained_parameters,
)

# 64 px renders keep a CPU run to seconds; the tiny VAE starts from random weights, so its reconstruction is poor.
CONFIG = VaeFinetuneConfig(resolution=64, num_train_images=16, num_heldout_images=8, batch_size=4, lr=2e-3, seed=3)
NUM_STEPS = 24


def test_vae_decoder_finetune_improves_text_psnr() -> None:
    torch.manual_seed(0)
    vae = build_vae(CONFIG)
    frozen = encoder_state(vae)
    images, heldout = train_images(CONFIG), train_images(CONFIG, heldout=True)
    before = reconstruction_scores(heldout, reconstruct(vae, heldout))
    optimizer = torch.optim.AdamW(trained_parameters(vae), lr=CONFIG.lr, weight_decay=0.0)
    losses = []
    train_steps(
        DecoderOnly(vae),
        optimizer,
        encode(vae, images),
        images_to_tensor(images),
        CONFIG,
        start=0,
        end=NUM_STEPS,
        on_step=lambda step, metrics: losses.append(metrics["loss"]),
    )
    after = reconstruction_scores(heldout, reconstruct(vae, heldout))
    assert after["psnr"] > before["psnr"] + 1.0, (before, after)
    assert after["ssim"] > before["ssim"] + 0.15, (before, after)
    assert sum(losses[-5:]) < sum(losses[:5])
    for name, tensor in vae.state_dict().items():
        if name in frozen:
            assert torch.equal(tensor, frozen[name]), f"frozen tensor {name} changed"
    assert any(name.startswith("decoder.") for name in vae.state_dict()) and not any(
        name.startswith("decoder.") for name in frozen
    )


@pytest.mark.slow
def test_finetune_job_on_ray_train(ray_session, tmp_path) -> None:
    from jobs.finetune_vae import main

    summary = main(
        [
            "--config",
            "configs/finetune_vae_tiny.yaml",
            "--max-steps",
            "6",
            f"output_dir={tmp_path}",
            "resolution=64",
            "num_train_images=8",
            "num_heldout_images=4",
        ]
    )
    checkpoint = pathlib.Path(summary["checkpoint"])
    assert read_metadata(checkpoint)["parts"] == ["vae"] and read_metadata(checkpoint)["step"] == 6
    tuned = build_components("tiny", weights_dir=checkpoint, parts=("vae",)).vae
    original = build_components("tiny", parts=("vae",)).vae
    tuned_state, original_state = tuned.state_dict(), original.state_dict()
    assert all(torch.equal(tuned_state[name], original_state[name]) for name in encoder_state(original))
    decoder = [name for name in original_state if name.startswith("decoder.")]
    assert any(not torch.equal(tuned_state[name], original_state[name]) for name in decoder)
    assert json.loads(pathlib.Path(summary["grid"]).with_name("summary.json").read_text())["heldout"]["after"]
    assert pathlib.Path(summary["loss_curve"]).is_file()
    rows = read_metrics(summary["metrics"])  # the job's own metrics reach the CSV beside the shared ones
    assert int(rows[-1]["step"]) == 6 and all(float(rows[-1][key]) > 0 for key in ("loss", "l1", "perceptual"))
