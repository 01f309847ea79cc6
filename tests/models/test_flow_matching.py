"""The flow-matching loss: its target and sign, the sigma distributions, and a memorisation run that proves the
loss, the timestep convention, the conditioning and the sampler agree with each other."""

from __future__ import annotations

import pytest
import torch

from models.condition_encoder import ConditionEncoder
from models.flow_matching import flow_matching_loss, noisy_latents
from models.presets import build_components
from models.sampler import sample
from models.schedule import loss_weights, sample_training_sigmas


def test_loss_is_mse_to_noise_minus_data():
    latents, noise, sigmas = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4), torch.tensor([0.25, 0.75])
    noisy = noisy_latents(latents, noise, sigmas)
    torch.testing.assert_close(noisy[0], 0.75 * latents[0] + 0.25 * noise[0])

    class Oracle(torch.nn.Module):
        """Returns the true velocity for the batch above: the loss must then be zero."""

        def forward(self, hidden_states, timestep, **kwargs):
            from models.packing import pack_latents

            assert torch.allclose(timestep, sigmas)  # the model sees sigma itself, not 1000 sigma
            return (pack_latents(noise - latents),)

    prompt_embeds = type("P", (), {"embeds": torch.zeros(2, 3, 8), "mask": torch.ones(2, 3, dtype=torch.long)})()
    out = flow_matching_loss(Oracle(), latents, prompt_embeds, sigmas=sigmas, noise=noise)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-10)


def test_edit_references_are_frames_in_order():
    """An Edit-Plus training batch: the references follow the noisy tokens in the order given, each with its own
    grid in ``img_shapes`` (frames 1, 2), and the loss is on the generated tokens only; the batch the training loop
    decodes reaches the loss that way."""
    from models.packing import pack_latents
    from store import columns as C
    from training.loop import condition_frames

    latents, noise, sigmas = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4), torch.tensor([0.25, 0.75])
    first, second = torch.randn(2, 16, 4, 6), torch.randn(2, 16, 2, 2)
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, hidden_states, timestep, img_shapes, **kwargs):
            seen.update(hidden=hidden_states, shapes=img_shapes)
            return (hidden_states * 0 + 1,)

    prompt = type("P", (), {"embeds": torch.zeros(2, 3, 8), "mask": torch.ones(2, 3, dtype=torch.long)})()
    out = flow_matching_loss(Recorder(), latents, prompt, sigmas=sigmas, noise=noise, source_latents=[first, second])
    noisy = pack_latents(noisy_latents(latents, noise, sigmas))
    assert torch.equal(seen["hidden"], torch.cat([noisy, pack_latents(first), pack_latents(second)], dim=1))
    assert seen["shapes"] == [[(1, 2, 2), (1, 2, 3), (1, 1, 1)]] * 2
    assert out.prediction.shape == latents.shape and bool((out.prediction == 1).all())

    batch = {C.SOURCE_LATENTS: first, C.EXTRA_SOURCE_LATENTS: torch.stack([second[:, :, :, :2].repeat(1, 1, 2, 3)], 1)}
    frames = condition_frames(batch, torch.device("cpu"))
    assert (
        len(frames) == 2
        and torch.equal(frames[0], first)
        and torch.equal(frames[1], batch[C.EXTRA_SOURCE_LATENTS][:, 0])
    )
    assert torch.equal(condition_frames({C.SOURCE_LATENTS: first}, torch.device("cpu")), first)
    assert condition_frames({}, torch.device("cpu")) is None


def test_sigma_sampling_distributions():
    generator = torch.Generator().manual_seed(0)
    uniform = sample_training_sigmas(20000, "uniform", generator=generator)
    logit = sample_training_sigmas(20000, "logit_normal", generator=generator)
    assert 0 < uniform.min() and uniform.max() < 1 and abs(uniform.mean().item() - 0.5) < 0.01
    assert abs(uniform.std().item() - (1 / 12) ** 0.5) < 0.01
    # logit-normal(0, 1): median 0.5, more mass in the middle than uniform.
    assert abs(logit.median().item() - 0.5) < 0.01
    assert ((logit - 0.5).abs() < 0.25).float().mean() > ((uniform - 0.5).abs() < 0.25).float().mean() + 0.1
    assert torch.allclose(loss_weights(torch.tensor([0.5]), "sigma_sqrt"), torch.tensor([4.0]))
    with pytest.raises(ValueError, match="sigma sampling"):
        sample_training_sigmas(1, "beta")


def test_memorizes_two_prompts():
    components = build_components("tiny", parts=("transformer", "text_encoder", "tokenizer"), seed=3)
    encoder = ConditionEncoder(components.text_encoder, components.tokenizer)
    prompts = ["a red apple on a wooden table", "a snowy mountain under the night sky"]
    conditions = encoder.encode(prompts)
    generator = torch.Generator().manual_seed(1)
    targets = torch.randn(2, 16, 8, 8, generator=generator)

    transformer = components.transformer.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(400):
        out = flow_matching_loss(transformer, targets, conditions, sigma_sampling="uniform", generator=generator)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    transformer.eval()

    generated = sample(
        transformer, conditions, height=64, width=64, num_steps=20, generator=torch.Generator().manual_seed(5)
    )
    distances = torch.cdist(generated.flatten(1), targets.flatten(1))  # [generated, target]
    own, other = distances.diagonal(), distances.flip(1).diagonal()
    # Each prompt lands far closer to its own latent than to the other's (the targets are ~33 apart).
    assert torch.all(own * 2.5 < other), distances
    # And close in absolute terms: within half the norm of the target itself.
    assert torch.all(own < 0.5 * targets.flatten(1).norm(dim=1)), distances
