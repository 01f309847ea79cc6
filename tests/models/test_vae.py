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
