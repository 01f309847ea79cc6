"""Rewards: OCR on rendered text, mean colour, CLIP score, weighted sums and user-defined rewards by path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.synth import SynthConfig
from pipelines.synth.generator import generate_samples
from training.post_training.rewards import (
    Generated,
    MeanColorReward,
    OcrReward,
    Reward,
    build_reward,
    quoted_text,
)


class BrightnessReward(Reward):
    """A user's reward, referenced from a config as ``tests.training.post_training.test_rewards:BrightnessReward``."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, batch: Generated) -> np.ndarray:
        return self.scale * batch.images.mean(axis=(1, 2, 3)) / 255.0


def _wrong_text(text: str) -> str:
    """A text of the same length sharing no character with ``text``: digits for words, letters for numbers."""
    pool = "qxzj" if any(char.isdigit() for char in text) else "0123456789"
    return "".join(pool[i % len(pool)] for i in range(len(text.replace(" ", ""))))


def test_quoted_text():
    assert quoted_text('A sign that reads "OPEN" over a door') == "OPEN"
    assert quoted_text("招牌上写着“欢迎光临”和“出口”") == "欢迎光临出口"
    assert quoted_text("no quotes here") == ""


def test_ocr_reward():
    config = SynthConfig(seed=3, resolutions=[(320, 320)], language_mix={"en": 1.0}, unit_mix={"word": 1.0})
    samples = generate_samples(config, "pure", 6)
    assert all(sample.image is not None for sample in samples)
    images = np.stack([sample.image for sample in samples])
    right = [sample.caption for sample in samples]  # the synthesiser quotes the rendered text in its caption
    wrong = [
        caption.replace(f'"{sample.rendered_text}"', f'"{_wrong_text(sample.rendered_text)}"')
        for caption, sample in zip(right, samples, strict=True)
    ]
    assert all(w != r for w, r in zip(wrong, right, strict=True))
    reward = OcrReward()
    good = reward(Generated(right, images, torch.zeros(6, 16, 40, 40)))
    bad = reward(Generated(wrong, images, torch.zeros(6, 16, 40, 40)))
    print("right text:", good.round(2), "wrong text:", bad.round(2))
    assert good.mean() > 0.9 and good.min() > 0.7
    assert bad.max() < 0.15


def test_mean_color_reward_and_weighted_sum():
    red = np.broadcast_to(np.array([200, 32, 40], np.uint8), (1, 16, 16, 3))  # the palette's red
    blue = np.broadcast_to(np.array([30, 90, 200], np.uint8), (1, 16, 16, 3))
    images = np.concatenate([red, blue])
    latents = torch.zeros(2, 16, 2, 2)
    color = MeanColorReward()
    scores = color(Generated(["a red car", "a red car"], images, latents))
    assert scores[0] == pytest.approx(1.0) and scores[1] < 0.7
    assert color.target("a dark red barn").tolist() != color.target("a red barn").tolist()  # longest name first
    with pytest.raises(ValueError, match="names none"):
        color(Generated(["a car", "a car"], images, latents))

    total = build_reward(
        [
            {"kind": "mean_color", "weight": 2.0},
            {
                "kind": "tests.training.post_training.test_rewards:BrightnessReward",
                "weight": 0.5,
                "options": {"scale": 2.0},
            },
            {"kind": "latent_target", "weight": 1.0, "options": {"target": 1.0}},
        ]
    )
    batch = Generated(["a red car", "a blue car"], images, latents)
    parts = total.components(batch)
    assert set(parts) == {"mean_color", "BrightnessReward", "latent_target"}
    expected = 2.0 * parts["mean_color"] + 0.5 * parts["BrightnessReward"] + parts["latent_target"]
    np.testing.assert_allclose(total(batch), expected)
    np.testing.assert_allclose(parts["latent_target"], [-1.0, -1.0])
    with pytest.raises(ValueError, match="unknown reward"):
        build_reward([{"kind": "nope"}])
    with pytest.raises(ValueError, match="bad options"):
        build_reward([{"kind": "latent_target", "options": {"colour": 1}}])


def test_clip_reward_scores_each_image_with_its_prompt():
    reward = build_reward([{"kind": "clip"}])  # tiny-clip: random weights, real architecture
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    scores = reward(Generated(["a cat", "a dog", "a cat"], images, torch.zeros(3, 16, 8, 8)))
    assert scores.shape == (3,) and np.all(np.abs(scores) <= 1.0)
    again = reward(Generated(["a cat", "a dog", "a cat"], images, torch.zeros(3, 16, 8, 8)))
    np.testing.assert_allclose(scores, again)


def test_judge_reward_scores_scene_prompts_and_can_be_negated():
    from pipelines.synth import shapes

    scenes = shapes.scenes(4, seed=2, kinds=("one", "two"), split="held_out")
    images = np.stack([shapes.render_scene(scene, 64) for scene in scenes])
    prompts = [shapes.caption(scene) for scene in scenes]
    batch = Generated(prompts, images, torch.zeros(4, 16, 8, 8))
    reward = build_reward([{"kind": "judge"}])
    np.testing.assert_allclose(reward(batch), 1.0)
    wrong = Generated(prompts[1:] + prompts[:1], images, batch.latents)  # each image judged against another caption
    assert reward(wrong).max() < 1.0
    # A negated judge (the sanity check that GRPO follows the reward's sign).
    np.testing.assert_allclose(build_reward([{"kind": "judge", "weight": -1.0}])(batch), -1.0)
    # The shape margin's option: ground-truth renders read clearly as their shapes, so the margin adds to the share.
    assert (build_reward([{"kind": "judge", "options": {"shape_margin": 1.0}}])(batch) > 1.0).all()
    with pytest.raises(ValueError, match="shape_margin must be at least 0"):
        build_reward([{"kind": "judge", "options": {"shape_margin": -1.0}}])
    with pytest.raises(ValueError, match="not a shape-scene caption"):
        reward(Generated(["a red car"], images[:1], batch.latents[:1]))
