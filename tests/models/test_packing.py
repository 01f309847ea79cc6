"""Packing latents into 2x2 patch tokens and the latent normalisation, both ways."""

from __future__ import annotations

import pytest
import torch
from diffusers import QwenImagePipeline

from models.packing import check_image_size, img_shapes, latent_size, pack_latents, unpack_latents
from models.vae import LatentVAE, images_to_tensor, tensor_to_images


def test_pack_unpack_roundtrip():
    latents = torch.randn(3, 16, 10, 14)
    tokens = pack_latents(latents)
    assert tokens.shape == (3, 5 * 7, 64)
    assert torch.equal(unpack_latents(tokens, 10, 14), latents)
    # Same layout as the diffusers pipeline (channel-major inside each 2x2 patch).
    reference = QwenImagePipeline._pack_latents(latents.unsqueeze(1), 3, 16, 10, 14)
    assert torch.equal(tokens, reference)
    assert torch.equal(tokens[0, 0], latents[0, :, :2, :2].reshape(64))
    assert img_shapes(3, 10, 14) == [[(1, 5, 7)]] * 3


def test_image_size_rules():
    assert latent_size(1328, 1328) == (166, 166)  # docs/qwen_image.md §10: a 1328 latent is [16, 166, 166]
    assert latent_size(928, 1664) == (116, 208)
    with pytest.raises(ValueError, match="multiple of 16"):
        check_image_size(1000, 1024)
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.zeros(1, 16, 5, 4))


def test_latent_normalisation_roundtrip(tiny_components):
    vae = LatentVAE(tiny_components.vae)
    raw = torch.randn(2, 16, 4, 6) * 3 + 1
    normalised = vae.normalize(raw)
    torch.testing.assert_close(vae.denormalize(normalised), raw, atol=1e-5, rtol=1e-5)
    # Per channel: (z - mean) / std with the 16 values of the VAE config.
    channel = 5
    mean, std = tiny_components.vae.config.latents_mean[channel], tiny_components.vae.config.latents_std[channel]
    torch.testing.assert_close(normalised[:, channel], (raw[:, channel] - mean) / std)

    # Through the real (tiny) VAE: encode gives normalised latents of the right shape; decode returns to [-1, 1].
    images = torch.rand(2, 3, 64, 48) * 2 - 1
    latents = vae.encode(images)
    assert latents.shape == (2, 16, 8, 6)
    posterior = tiny_components.vae.encode(images.unsqueeze(2)).latent_dist.mode()[:, :, 0]
    torch.testing.assert_close(vae.denormalize(latents), posterior, atol=1e-5, rtol=1e-5)
    decoded = vae.decode(latents)
    assert decoded.shape == (2, 3, 64, 48) and decoded.min() >= -1 and decoded.max() <= 1


def test_uint8_image_conversion_roundtrip():
    images = torch.randint(0, 256, (2, 8, 16, 3), dtype=torch.uint8).numpy()
    assert (tensor_to_images(images_to_tensor(images)) == images).all()
    with pytest.raises(ValueError, match="uint8"):
        images_to_tensor(images.astype("float32"))
