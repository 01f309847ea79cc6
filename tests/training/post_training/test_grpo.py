"""GRPO's objective: group advantages, the clipped ratio, and learning a verifiable reward (where the sign of the
advantage decides the direction)."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch

from models.presets import build_components
from training.post_training.grpo import (
    GrpoSettings,
    RolloutBatch,
    clipped_objective,
    gaussian_kl,
    group_advantages,
    grpo_update,
)
from training.post_training.rewards import Generated, LatentTargetReward
from training.post_training.rollout import sde_rollout

GROUP = 8
ITERATIONS = 40


def test_group_advantages_are_normalised_per_group_and_clipped():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 10.0, 10.0], [0.0, 0.0, 0.0, 100.0]])
    advantages = group_advantages(rewards, eps=1e-4, clip=1.5)
    torch.testing.assert_close(advantages[0], (rewards[0] - 2.5) / (rewards[0].std(unbiased=False) + 1e-4))
    assert torch.all(advantages[1] == 0)  # a group with equal rewards teaches nothing
    assert advantages[2, 3] == 1.5 and torch.all(advantages[2, :3] < 0)  # +1.73 clipped to 1.5
    with pytest.raises(ValueError, match="group"):
        group_advantages(torch.ones(4))


def test_dynamic_sampling_trains_on_groups_whose_rewards_differ():
    """DAPO's dynamic sampling (``max_rollout_rounds``): groups that score alike come last, and each further round
    draws other prompts, while round 0 draws what a run without it draws."""
    from training.post_training.config import GrpoConfig
    from training.post_training.grpo_train import choose_groups, informative, iteration_prompts

    groups = [{"name": name, "rewards": np.array(r)} for name, r in [("a", [1, 1]), ("b", [0, 1]), ("c", [0.5, 0.2])]]
    assert [informative(g) for g in groups] == [False, True, True]
    assert [g["name"] for g in choose_groups(groups, 2)] == ["b", "c"]
    assert [g["name"] for g in choose_groups(groups[:2], 2)] == ["b", "a"]  # too few: a uniform group fills the rest
    config = GrpoConfig.model_construct(seed=0, prompts_per_iteration=4)
    first = iteration_prompts(config, 100, 3, 0, 1)
    assert first == iteration_prompts(config, 100, 3, 0, 1, 0)
    assert first == np.random.default_rng([config.seed, 3]).choice(100, size=4, replace=False).tolist()
    assert iteration_prompts(config, 100, 3, 0, 1, 1) != first


def test_clipped_objective_and_kl():
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    old = torch.zeros(4)
    new = torch.tensor([0.5, 0.5, -0.5, -0.5])  # ratios e^0.5 and e^-0.5, far outside 1 +- 0.1
    loss, ratio = clipped_objective(new, old, advantages, clip_range=0.1)
    # max(-A r, -A clip(r)): a positive advantage gains nothing beyond 1 + e, a negative one beyond 1 - e;
    # moving the wrong way is not clipped.
    expected = torch.stack([-1.1 * torch.ones(()), ratio[1], -ratio[2], 0.9 * torch.ones(())]).mean()
    torch.testing.assert_close(loss, expected)
    mean, ref = torch.zeros(2, 3), torch.ones(2, 3)
    torch.testing.assert_close(gaussian_kl(mean, ref, torch.tensor(2.0)), torch.full((2,), 1 / 8))


def _train(seed: int, prompt, sign: float, kl_beta: float = 0.0) -> list[float]:
    """GRPO in-process on the tiny preset; the reward is the closeness of the sample's latents to 1."""
    torch.manual_seed(seed)
    transformer = build_components("tiny", parts=("transformer",), seed=seed).transformer
    reference = copy.deepcopy(transformer)
    transformer.requires_grad_(True)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-3, weight_decay=0.0)
    settings = GrpoSettings(train_steps=3, num_minibatches=2, clip_range=1e-4, kl_beta=kl_beta)
    reward = LatentTargetReward(target=1.0)
    prompts = prompt.repeat_interleave(GROUP)
    generator = torch.Generator().manual_seed(seed)
    means = []
    for _ in range(ITERATIONS):
        trajectory = sde_rollout(transformer, prompts, height=32, width=32, num_steps=6, generator=generator)
        rewards = torch.as_tensor(reward(Generated([], None, trajectory.final)), dtype=torch.float32)
        means.append(float(rewards.mean()))
        advantages = sign * group_advantages(rewards.view(-1, GROUP)).reshape(-1)
        batch = RolloutBatch(
            trajectory.latents, trajectory.log_probs, advantages, prompts, trajectory.sigmas, trajectory.sigma_max
        )
        grpo_update(
            transformer,
            optimizer,
            batch,
            settings,
            reference=lambda: contextlib.nullcontext(reference),
            generator=generator,
        )
    return means


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_improves_reward(seed, color_prompts):
    _, prompt = color_prompts
    learned = _train(seed, prompt, sign=1.0)
    start, end = np.mean(learned[:5]), np.mean(learned[-5:])
    print(f"seed {seed}: mean reward {start:.3f} -> {end:.3f}")
    assert end - start > 0.25, f"seed {seed}: {start:.3f} -> {end:.3f}"
    if seed == 0:  # the sign matters: the same run with negated advantages moves the other way
        negated = _train(seed, prompt, sign=-1.0)
        assert np.mean(negated[-5:]) < np.mean(negated[:5]) - 0.1, negated


def test_grpo_kl_term_holds_the_policy_near_the_reference(color_prompts):
    _, prompt = color_prompts
    anchored = _train(0, prompt, sign=1.0, kl_beta=1e4)  # without the KL term seed 0 gains well over 0.25
    assert abs(np.mean(anchored[-5:]) - np.mean(anchored[:5])) < 0.1, anchored
