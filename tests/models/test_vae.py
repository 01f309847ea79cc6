"""``LatentVAE``'s two computations of a one-frame image: diffusers' own ("3d") and the 2D one it reduces to ("2d")."""

from __future__ import annotations

import threading

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

from models.vae import LatentVAE


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _count_2d_convs(monkeypatch) -> list[int]:
    import models.vae

    calls = [0]
    conv = models.vae._one_frame_conv

    def counted(*args):
        calls[0] += 1
        return conv(*args)

    monkeypatch.setattr(models.vae, "_one_frame_conv", counted)
    return calls


def test_2d_frame_convs_compute_the_same_function(tiny_components, monkeypatch):
    vae = tiny_components.vae
    images = _images()
    exact, fast = LatentVAE(vae), LatentVAE(vae, frame_convs="2d")
    reference = vae.encode(images.unsqueeze(2)).latent_dist.mode()[:, :, 0]
    calls = _count_2d_convs(monkeypatch)
    # "3d" is diffusers' computation: the same bits as calling the VAE directly, and the 2D path never runs.
    assert torch.equal(exact.denormalize(exact.encode(images)), exact.denormalize(exact.normalize(reference)))
    assert calls[0] == 0
    latents = fast.encode(images)
    # Every causal convolution the encoder runs on a first frame ran as 2D: all but the temporal downsamplers (which
    # a first frame skips), and quant_conv.
    convs = [name for name, m in vae.encoder.named_modules() if isinstance(m, QwenImageCausalConv3d)]
    assert calls[0] == len([name for name in convs if not name.endswith("time_conv")]) + 1
    expected = exact.encode(images)
    assert (latents - expected).abs().max().item() <= 1e-5
    assert not torch.equal(latents, expected)  # a different computation, so not bit for bit
    decoded, expected_images = fast.decode(expected), exact.decode(expected)
    assert (decoded - expected_images).abs().max().item() <= 1e-5
    # Outside the call diffusers' class computes as before (the switch is per call, not global).
    after = vae.encode(images.unsqueeze(2)).latent_dist.mode()[:, :, 0]
    assert torch.equal(after, reference)


def test_2d_switch_stays_in_its_thread(tiny_components, monkeypatch):
    """A "2d" call in one thread leaves a diffusers call in another thread on diffusers' computation."""
    vae = tiny_components.vae
    images = _images()
    reference = vae.encode(images.unsqueeze(2)).latent_dist.mode()
    calls = _count_2d_convs(monkeypatch)
    inside = threading.Event()
    release = threading.Event()
    fast = LatentVAE(vae, frame_convs="2d")
    original = fast.vae.encode

    def paused_encode(*args, **kwargs):  # hold the "2d" call open while the other thread computes
        inside.set()
        release.wait(30)
        return original(*args, **kwargs)

    fast.vae = type("Paused", (), {"encode": staticmethod(paused_encode), "device": vae.device, "dtype": vae.dtype})()
    worker = threading.Thread(target=fast.encode, args=(images,))
    worker.start()
    assert inside.wait(30)
    other = vae.encode(images.unsqueeze(2)).latent_dist.mode()
    release.set()
    worker.join(60)
    assert torch.equal(other, reference)
    assert calls[0] > 0  # the paused call did run as 2D, after the other thread's call


def test_frame_convs_is_checked(tiny_components):
    with pytest.raises(ValueError, match="frame_convs"):
        LatentVAE(tiny_components.vae, frame_convs="2.5d")


def test_tiled_decode_matches_full(tiny_components):
    """Tiled decoding (tiles of 128 px blended over 32) stays within 0.03 mean and 0.5 largest absolute difference
    (images in [-1, 1]; 0.014 and 0.32 measured) of one call, for the tiny preset's random VAE, whose seams are its
    worst case (no training smoothed its receptive field); slices decode each image as it decodes alone, bit for
    bit."""
    vae = LatentVAE(tiny_components.vae)
    latents = torch.randn(2, 16, 24, 16, generator=torch.Generator().manual_seed(0))
    full = vae.decode(latents[:1])
    vae.configure_decoding(tile_size=128, tile_overlap=32)
    try:
        tiled = vae.decode(latents[:1])
        vae.configure_decoding(max_batch_pixels=1)
        sliced = vae.decode(latents)
    finally:
        vae.configure_decoding()
    difference = (tiled - full).abs()
    assert tiled.shape == full.shape == (1, 3, 192, 128)
    assert 0 < difference.mean() < 0.03 and difference.max() < 0.5  # above 0: the tiles were used
    alone = torch.cat([full, vae.decode(latents[1:])])
    assert torch.equal(sliced, alone)
    with pytest.raises(ValueError, match="multiple of 32"):
        vae.configure_decoding(tile_size=100)
