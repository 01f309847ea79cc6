"""Diffusion-DPO for flow matching: the loss of docs/qwen_image.md §8 and learning a synthetic preference."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch

from models.presets import build_components
from models.prompt_embeds import PromptEmbeds
from training.post_training.dpo import PairBatch, dpo_loss, dpo_step, evaluate_pairs

STEPS = 60


def _pairs(count: int, generator: torch.Generator) -> PairBatch:
    """Winners have a positive mean in every latent channel, losers a negative one; prompts are random."""
    winner = torch.randn(count, 16, 8, 8, generator=generator) * 0.7 + 0.5
    loser = torch.randn(count, 16, 8, 8, generator=generator) * 0.7 - 0.5
    embeds = torch.randn(count, 6, 64, generator=generator)
    return PairBatch(winner, loser, PromptEmbeds(embeds, torch.ones(count, 6, dtype=torch.long)))


def _train(beta: float, *, swap: bool, seed: int = 0) -> tuple[dict, dict]:
    """``STEPS`` DPO steps on fresh synthetic pairs; held-out metrics before and after."""
    generator = torch.Generator().manual_seed(seed)
    transformer = build_components("tiny", parts=("transformer",), seed=seed).transformer
    frozen = copy.deepcopy(transformer)
    transformer.requires_grad_(True)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-4, weight_decay=0.0)

    def reference():
        return contextlib.nullcontext(frozen)

    held_out = [_pairs(16, generator) for _ in range(2)]
    before = evaluate_pairs(transformer, reference, held_out, beta=beta)
    for _ in range(STEPS):
        batch = _pairs(8, generator)
        if swap:
            batch = PairBatch(batch.loser, batch.winner, batch.prompt)
        dpo_step(transformer, optimizer, reference, batch, beta=beta, generator=generator)
    return before, evaluate_pairs(transformer, reference, held_out, beta=beta)


def test_dpo_loss_uses_the_same_sigma_and_noise_for_winner_and_loser():
    generator = torch.Generator().manual_seed(0)
    transformer = build_components("tiny", parts=("transformer",)).transformer
    batch = _pairs(4, generator)
    # Identical winner and loser under the same sigma and noise: zero difference, whatever the model.
    same = dpo_loss(
        transformer,
        lambda: contextlib.nullcontext(transformer),
        PairBatch(batch.winner, batch.winner, batch.prompt),
        beta=100.0,
    )
    assert torch.all(same.d_policy == 0)
    # The policy equal to the reference: margin 0, loss log 2, every pair a tie (accuracy 1/2).
    out = dpo_loss(transformer, lambda: contextlib.nullcontext(transformer), batch, beta=100.0)
    assert torch.all(out.margin == 0) and out.loss.item() == pytest.approx(math.log(2))
    assert out.accuracy.item() == 0.5 and torch.all(out.d_policy != 0)
    # The sft term: the winners' mean flow-matching error at the same sigma and noise, times its weight.
    generator = torch.Generator().manual_seed(1)
    plain = dpo_loss(transformer, lambda: contextlib.nullcontext(transformer), batch, beta=100.0, generator=generator)
    generator = torch.Generator().manual_seed(1)
    with_sft = dpo_loss(
        transformer, lambda: contextlib.nullcontext(transformer), batch, beta=100.0, sft_weight=0.5, generator=generator
    )
    assert torch.equal(plain.winner_error, with_sft.winner_error) and torch.all(plain.winner_error > 0)
    assert with_sft.loss.item() == pytest.approx(math.log(2) + 0.5 * plain.winner_error.mean().item())


def test_dpo_learns_preference():
    before, after = _train(beta=100.0, swap=False)
    print(f"beta 100: held-out accuracy {before['eval_accuracy']:.2f} -> {after['eval_accuracy']:.2f}")
    assert before["eval_accuracy"] == 0.5 and after["eval_accuracy"] > 0.8 and after["eval_margin"] > 0

    # beta = 0: the loss is log 2 whatever the model, no preference reaches the weights. (A beta of 1e-8 still
    # learns: Adam rescales the gradient, so only beta below Adam's eps acts as zero.)
    _, flat = _train(beta=0.0, swap=False)
    print(f"beta 0: held-out accuracy {flat['eval_accuracy']:.2f}")
    assert flat["eval_accuracy"] == 0.5

    _, swapped = _train(beta=100.0, swap=True)  # labels swapped: it learns the opposite preference
    print(f"swapped labels: held-out accuracy {swapped['eval_accuracy']:.2f}")
    assert swapped["eval_accuracy"] < 0.2 and swapped["eval_margin"] < 0
