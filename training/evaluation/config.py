"""``EvaluateConfig``: which models to compare and how large each task is (``configs/evaluate_*.yaml``)."""

from __future__ import annotations

from typing import Literal

import pydantic

from models.clip import ClipConfig
from models.config import StrictModel
from pipelines.pools import PoolConfig
from pipelines.synth.config import Tier


class ModelSpec(StrictModel):
    """One model: a preset, a checkpoint folder we wrote (parts it lacks come from its preset), or the reference
    renderer (``reference: true``: the expected text drawn plainly, the OCR ceiling of the text tasks)."""

    name: str
    preset: str = "tiny"
    checkpoint: str | None = None
    weights_dir: str | None = None  # the qwen-image folder, for a preset or the parts a checkpoint lacks
    reference: bool = False

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.reference and self.checkpoint:
            raise ValueError(f"model {self.name!r}: reference renders text itself; drop checkpoint")
        return self


# A run's models as one JSON string (what the generation stage's actors are built with) and back.
MODEL_LIST = pydantic.TypeAdapter(list[ModelSpec])


class VaeEvalConfig(StrictModel):
    enabled: bool = True
    resolution: int = pydantic.Field(default=256, ge=64)  # docs/qwen_image.md §9 compares at 256x256
    num_text_images: int = pydantic.Field(default=32, ge=1)  # per language (en, zh)
    num_ordinary_images: int = pydantic.Field(default=32, ge=1)
    ordinary_folder: str | None = None  # e.g. ImageNet validation images; None: photo-like generated scenes
    pool: PoolConfig = PoolConfig(batch_size=8)


class CharEvalConfig(StrictModel):
    """ChineseWord-style: one prompt per character, the character drawn at random from its tier."""

    num_per_tier: int = pydantic.Field(default=50, ge=0)
    tiers: list[Tier] = ["gb2312_level1", "gb2312_level2", "gbk_extra"]
    template: str = "白色背景上写着一个黑色的汉字“{}”"


class TextEvalConfig(StrictModel):
    """LongText-Bench-style: prompts that quote a multi-word English or Chinese text."""

    num_per_language: int = pydantic.Field(default=20, ge=0)
    template_en: str = 'A poster with the text "{}"'
    template_zh: str = "一张海报，上面写着“{}”"


class SceneEvalConfig(StrictModel):
    """Shape scenes scored by the judge (``training.evaluation.judge``): colour, shape, position and count accuracy,
    GenEval-style, on prompts of the scene grammar; ``split: held_out`` draws only held-out combinations."""

    num_prompts: int = pydantic.Field(default=0, ge=0)  # 0: off (models that never saw shape scenes)
    split: Literal["held_out", "train", "any"] = "held_out"
    kinds: list[Literal["one", "two"]] = ["one", "two"]
    resolution: int = pydantic.Field(default=64, ge=32, multiple_of=16)


class GenerationConfig(StrictModel):
    resolution: int = pydantic.Field(default=256, ge=64)
    num_steps: int = pydantic.Field(default=20, ge=1)
    true_cfg_scale: float = 4.0
    pool: PoolConfig = PoolConfig(batch_size=4)

    @pydantic.field_validator("resolution")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"resolution must be a multiple of 16, got {value}")
        return value


class EvaluateConfig(StrictModel):
    models: list[ModelSpec] = [ModelSpec(name="tiny")]
    output_dir: str = "outputs/evaluate"
    seed: int = 0
    vae: VaeEvalConfig = VaeEvalConfig()
    chars: CharEvalConfig = CharEvalConfig()
    text: TextEvalConfig = TextEvalConfig()
    scenes: SceneEvalConfig = SceneEvalConfig()
    generation: GenerationConfig = GenerationConfig()
    # The CLIP model of the CLIP score; None: no CLIP score (a random CLIP's score says nothing: name a real one,
    # {model_name: ViT-B-32, weights_path: ...}, or tiny-clip to exercise the stage).
    clip: ClipConfig | None = None
    clip_prompts: list[str] = [
        "a red fox in the snow",
        "a bowl of noodles on a wooden table",
        "a lighthouse at sunset",
        "一只在草地上奔跑的小狗",
    ]
    ocr_pool: PoolConfig = PoolConfig(batch_size=8)
    clip_pool: PoolConfig = PoolConfig(batch_size=16)
    grid_size: int = pydantic.Field(default=8, ge=1)  # images per row of each grid

    @pydantic.field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        names = [model.name for model in models]
        if not models or len(set(names)) != len(names):
            raise ValueError(f"models needs at least one model and unique names, got {names}")
        return models

    def limit(self, num: int) -> EvaluateConfig:
        """Smoke run: at most ``num`` items per task (``--limit``)."""
        return self.model_copy(
            update={
                "vae": self.vae.model_copy(
                    update={
                        "num_text_images": min(num, self.vae.num_text_images),
                        "num_ordinary_images": min(num, self.vae.num_ordinary_images),
                    }
                ),
                "chars": self.chars.model_copy(update={"num_per_tier": min(num, self.chars.num_per_tier)}),
                "text": self.text.model_copy(update={"num_per_language": min(num, self.text.num_per_language)}),
                "scenes": self.scenes.model_copy(update={"num_prompts": min(num, self.scenes.num_prompts)}),
                "clip_prompts": self.clip_prompts[:num],
            }
        )
