"""Rewards for RL: small classes behind one interface, so that users add their own.

A reward scores a batch of generated samples (``Generated``: prompts, decoded images, latents) with one float per
sample, higher is better. Built in (docs/qwen_image.md §8 names OCR accuracy and CLIP-type preference):

- ``ocr``: ``1 - edit distance / length`` between the text in quotes in the prompt and what RapidOCR reads;
- ``clip``: cosine similarity of the image and the prompt under an open_clip model (local weights);
- ``judge``: the share of a shape-scene prompt's attributes the image gets right (``training.evaluation.judge``);
- ``mean_color``: closeness of the image's mean colour to a colour named in the prompt (cheap and verifiable);
- ``latent_target``: closeness of the latents to a constant (no decoding: the cheapest sanity check).

``WeightedSum`` combines several. A user's reward is a ``Reward`` subclass named in a config as
``package.module:ClassName`` (or registered with ``register_reward``); its ``options`` are constructor arguments.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import re
import unicodedata
from collections.abc import Callable

import numpy as np
import torch

from models.ocr import OcrConfig, OcrEngine, text_accuracy


@dataclasses.dataclass
class Generated:
    """A batch to score: ``images`` uint8 ``[B, H, W, 3]`` (None when no reward needs them), ``latents``
    normalised ``[B, 16, h, w]``."""

    prompts: list[str]
    images: np.ndarray | None
    latents: torch.Tensor


class Reward(abc.ABC):
    """One float per sample, higher is better. Set ``needs_images = False`` to be scored without VAE decoding."""

    needs_images: bool = True

    @abc.abstractmethod
    def __call__(self, batch: Generated) -> np.ndarray:
        """``[B]`` float64 rewards."""


REWARDS: dict[str, type[Reward]] = {}


def register_reward(name: str) -> Callable[[type[Reward]], type[Reward]]:
    """Class decorator: makes ``name`` usable as a reward ``kind`` in configs."""

    def register(cls: type[Reward]) -> type[Reward]:
        REWARDS[name] = cls
        return cls

    return register


QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|「([^」]+)」')


def quoted_text(prompt: str) -> str:
    """The text a prompt asks to be rendered: every quoted span (``"..."``, ``“...”``, ``「...」``), joined."""
    return "".join(next(group for group in match.groups() if group) for match in QUOTED.finditer(prompt))


def normalise_text(text: str) -> str:
    """NFKC and no whitespace: line breaks and spaces are layout, not text (as the synthesiser's check does)."""
    return "".join(unicodedata.normalize("NFKC", text).split())


@register_reward("ocr")
class OcrReward(Reward):
    """``1 - edit distance / length`` of the quoted text against the OCR text (Flow-GRPO's OCR reward); a prompt
    without quoted text scores 1 when nothing is read and 0 otherwise."""

    def __init__(self, min_text_score: float = 0.5, num_threads: int = 1):
        self.engine = OcrEngine(OcrConfig(min_text_score=min_text_score, num_threads=num_threads))

    def __call__(self, batch: Generated) -> np.ndarray:
        scores = []
        for prompt, image in zip(batch.prompts, batch.images, strict=True):
            read = "".join(line.text for line in self.engine.read(image))
            scores.append(text_accuracy(normalise_text(quoted_text(prompt)), normalise_text(read)))
        return np.asarray(scores, dtype=np.float64)


@register_reward("clip")
class ClipScoreReward(Reward):
    """Cosine similarity of image and prompt embeddings (open_clip; ``weights_path`` a local file, or the random
    ``tiny-clip`` for tests)."""

    def __init__(self, model_name: str = "tiny-clip", weights_path: str | None = None, seed: int = 0):
        from models.clip import ClipConfig, ClipModel

        self.model = ClipModel(ClipConfig(model_name=model_name, weights_path=weights_path, seed=seed))

    def __call__(self, batch: Generated) -> np.ndarray:
        return self.model.similarity(list(batch.images), batch.prompts).astype(np.float64)


@register_reward("mean_color")
class MeanColorReward(Reward):
    """``1 - ||mean RGB - named RGB|| / sqrt(3)`` (RGB in [0, 1]) for the colour the prompt names; names and values
    are the synthesiser's palette, longest name first ("dark red" before "red")."""

    def __init__(self) -> None:
        from pipelines.synth.captions import PALETTE

        self.colors = sorted(((color.en, np.asarray(color.rgb) / 255.0) for color in PALETTE), key=lambda c: -len(c[0]))

    def target(self, prompt: str) -> np.ndarray:
        lowered = prompt.lower()
        for name, rgb in self.colors:
            if re.search(rf"\b{re.escape(name)}\b", lowered):
                return rgb
        raise ValueError(f"mean_color reward: the prompt {prompt!r} names none of {[n for n, _ in self.colors]}")

    def __call__(self, batch: Generated) -> np.ndarray:
        means = batch.images.reshape(len(batch.images), -1, 3).mean(axis=1) / 255.0
        targets = np.stack([self.target(prompt) for prompt in batch.prompts])
        return 1.0 - np.linalg.norm(means - targets, axis=1) / np.sqrt(3.0)


@register_reward("judge")
class JudgeReward(Reward):
    """The shape-scene judge (``training.evaluation.judge``): the share of the prompt's attributes (colour, shape,
    position, count; or the word) the image gets right, in [0, 1]. Prompts must be captions of the scene grammar
    (``pipelines.synth.shapes``); any other prompt is an error that names it.

    ``shape_margin``: weight of how clearly each object has its caption's shape (``judge.reward``), which still ranks
    images that get every attribute right; 0 (the default) is the share alone."""

    def __init__(self, shape_margin: float = 0.0):
        if shape_margin < 0:
            raise ValueError(f"shape_margin must be at least 0, got {shape_margin}")
        self.shape_margin = shape_margin

    def __call__(self, batch: Generated) -> np.ndarray:
        from training.evaluation.judge import reward

        return np.array(
            [
                reward(image, prompt, shape_margin=self.shape_margin)
                for image, prompt in zip(batch.images, batch.prompts, strict=True)
            ]
        )


@register_reward("latent_target")
class LatentTargetReward(Reward):
    """``-mean((latents - target)^2)``: how close the normalised latents are to a constant."""

    needs_images = False

    def __init__(self, target: float = 1.0):
        self.value = float(target)

    def __call__(self, batch: Generated) -> np.ndarray:
        return -((batch.latents.float() - self.value) ** 2).mean(dim=(1, 2, 3)).double().cpu().numpy()


class WeightedSum(Reward):
    """``sum_i w_i r_i``; ``components`` gives each term for logging."""

    def __init__(self, terms: dict[str, tuple[Reward, float]]):
        if not terms:
            raise ValueError("a reward needs at least one term")
        self.terms = terms
        self.needs_images = any(reward.needs_images for reward, _ in terms.values())

    def components(self, batch: Generated) -> dict[str, np.ndarray]:
        return {name: reward(batch) for name, (reward, _) in self.terms.items()}

    def total(self, components: dict[str, np.ndarray]) -> np.ndarray:
        return sum(self.terms[name][1] * values for name, values in components.items())

    def __call__(self, batch: Generated) -> np.ndarray:
        return self.total(self.components(batch))


def reward_class(kind: str) -> type[Reward]:
    """A registered name, or ``package.module:ClassName``."""
    if ":" in kind:
        module_name, _, class_name = kind.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, Reward)):
            raise ValueError(
                f"reward {kind!r}: {class_name} in {module_name} is not a training.post_training.rewards.Reward"
            )
        return cls
    if kind not in REWARDS:
        raise ValueError(f"unknown reward {kind!r}; choose from {sorted(REWARDS)} or give package.module:ClassName")
    return REWARDS[kind]


def build_reward(specs: list) -> WeightedSum:
    """``RewardSpec``s (or their dicts) -> one ``WeightedSum``; terms are named by kind (``ocr``, ``ocr_2``...)."""
    from training.post_training.config import RewardSpec

    terms: dict[str, tuple[Reward, float]] = {}
    for spec in specs:
        spec = RewardSpec.model_validate(spec)
        base = spec.kind.rpartition(":")[2] if ":" in spec.kind else spec.kind
        name, index = base, 2
        while name in terms:
            name, index = f"{base}_{index}", index + 1
        try:
            terms[name] = (reward_class(spec.kind)(**spec.options), spec.weight)
        except TypeError as error:
            raise ValueError(f"reward {spec.kind!r}: bad options {spec.options}: {error}") from None
    return WeightedSum(terms)
