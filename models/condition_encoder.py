"""The condition encoder: prompt templates, Qwen2.5-VL last hidden states, and the drop of the system prompt.

docs/qwen_image.md §6. The prompt is wrapped in a chat template whose system part describes the task; the tokenizer gets
``max_length = 1024 + drop``; the last hidden state is split by the attention mask, the first ``drop`` tokens (the
system prompt and ``<|im_start|>user\\n``) are removed, and sequences are zero-padded to the longest with a mask of 1 on
valid tokens. With the real Qwen2 vocabulary the T2I prefix is 34 tokens and the edit prefix (before
``<|vision_start|>``) 64, which is what the drop counts remove.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

# Prompt embeddings live in a module of their own (no transformers import) so that trainers import them cheaply.
from models.prompt_embeds import PromptEmbeds, pad_prompt_embeds  # noqa: E402, F401


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A chat template with a ``{}`` for the user's text, and how many leading tokens the encoder drops."""

    name: str
    text: str
    drop: int

    @property
    def prefix(self) -> str:
        """Everything before the user's text (for edit, the vision tokens belong to the user's part)."""
        return self.text.split("{}")[0].split("<|vision_start|>")[0]

    def format(self, prompt: str) -> str:
        return self.text.format(prompt)


T2I_TEMPLATE = PromptTemplate(
    name="t2i",
    text=(
        "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
        "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    drop=34,
)
EDIT_TEMPLATE = PromptTemplate(
    name="edit",
    text=(
        "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
        "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
        "image that meets the user's requirements while maintaining consistency with the original input where "
        "appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    drop=64,
)
# Multi-image editing (Qwen-Image-Edit-2509 / 2511, diffusers' ``QwenImageEditPlusPipeline``): the edit template's
# system prompt, and in the user's part one marker per reference image, numbered from 1, before the instruction.
EDIT_PLUS_TEMPLATE = PromptTemplate(
    name="edit_plus",
    text=EDIT_TEMPLATE.text.replace("<|vision_start|><|image_pad|><|vision_end|>", ""),
    drop=64,
)
PICTURE_MARKER = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"
# The templates the producers encode with: ``pipelines/encode.py`` records each one's text and drop in the latent
# store's header, so a template added here changes every store's header.
ENCODER_TEMPLATES = {template.name: template for template in (T2I_TEMPLATE, EDIT_TEMPLATE, EDIT_PLUS_TEMPLATE)}
# Prompt tokens kept after the drop (diffusers' tokenizer_max_length).
MAX_PROMPT_TOKENS = 1024


class ConditionEncoder:
    """Qwen2.5-VL (frozen) turned into text conditions for the MMDiT."""

    def __init__(self, text_encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: str = "t2i"):
        if template not in ENCODER_TEMPLATES:
            raise ValueError(f"unknown prompt template {template!r}; choose from {sorted(ENCODER_TEMPLATES)}")
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.template = ENCODER_TEMPLATES[template]

    @property
    def hidden_size(self) -> int:
        return self.text_encoder.config.text_config.hidden_size

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        texts = [self.template.format(prompt) for prompt in prompts]
        return self.tokenizer(
            texts,
            max_length=MAX_PROMPT_TOKENS + self.template.drop,
            padding=True,
            truncation=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, prompts: str | list[str]) -> PromptEmbeds:
        """T2I conditions: hidden states after the drop of 34, zero-padded to the longest prompt of the batch."""
        if self.template.name != "t2i":
            raise ValueError("this encoder was built for the edit template: call encode_edit(prompts, images)")
        prompts = _as_list(prompts)
        tokens = self.tokenize(prompts).to(self.text_encoder.device)
        outputs = self._backbone(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        )
        return self._drop_and_pad(outputs.hidden_states[-1], tokens.attention_mask)

    @torch.no_grad()
    def encode_edit(self, prompts: str | list[str], images: list) -> PromptEmbeds:
        """Edit (TI2I) conditions: the source image goes through Qwen2.5-VL's vision tower in place of
        ``<|image_pad|>``; the drop of 64 removes the system prompt and keeps the image and the instruction.

        ``images``: one RGB image per prompt (PIL images or uint8 ``[H, W, 3]`` arrays), already at the size the
        caller wants the encoder to see (the processor rounds it to multiples of 28). With the ``edit_plus``
        template, one list of reference images per prompt, each announced by its "Picture N: " marker.
        """
        if self.template.name == "t2i":
            raise ValueError("this encoder was built for the t2i template: build one with template='edit'")
        prompts = _as_list(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        if self.template.name == "edit_plus":
            texts, images = self._edit_plus_texts(prompts, images)
        else:
            texts = [self.template.format(prompt) for prompt in prompts]
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt").to(
            self.text_encoder.device
        )
        outputs = self._backbone(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"].to(self.text_encoder.dtype),
            image_grid_thw=inputs["image_grid_thw"],
            output_hidden_states=True,
        )
        return self._drop_and_pad(outputs.hidden_states[-1], inputs["attention_mask"])

    def _edit_plus_texts(self, prompts: list[str], images: list) -> tuple[list[str], list]:
        """Edit-Plus: each prompt's references become "Picture 1: <vision>Picture 2: <vision>..." before its
        instruction; the processor takes all references of the batch in that order."""
        texts, flat = [], []
        for prompt, references in zip(prompts, images, strict=True):
            references = list(references) if isinstance(references, (list, tuple)) else [references]
            if not references:
                raise ValueError("every prompt needs at least one reference image")
            markers = "".join(PICTURE_MARKER.format(number) for number in range(1, len(references) + 1))
            texts.append(self.template.format(markers + prompt))
            flat.extend(references)
        return texts, flat

    @property
    def _backbone(self) -> PreTrainedModel:
        """The model without its language-model head: only hidden states are used, and the head would score the
        whole 151,936-token vocabulary at every position (97% of the tiny encoder's time; GBs for long prompts)."""
        return getattr(self.text_encoder, "model", self.text_encoder)

    @functools.cached_property
    def processor(self) -> Qwen2VLProcessor:
        """Qwen2.5-VL's processor around our tokenizer (built on first use: only the edit path needs it)."""
        return build_vl_processor(self.tokenizer)

    def _drop_and_pad(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> PromptEmbeds:
        """Split ``hidden: [B, T, D]`` by the mask, drop the template's leading tokens, zero-pad to the longest."""
        valid = attention_mask.bool()
        per_prompt = torch.split(hidden[valid], valid.sum(dim=1).tolist(), dim=0)
        return pad_prompt_embeds([sequence[self.template.drop :] for sequence in per_prompt])


def build_vl_processor(tokenizer: PreTrainedTokenizerBase, **image_kwargs) -> Qwen2VLProcessor:
    """Qwen2.5-VL's processor (image patches of 14, 2x2 merge) around ``tokenizer``; ``image_kwargs`` such as
    ``max_pixels`` bound the image size the vision tower sees."""
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**image_kwargs),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )


def _as_list(prompts: str | list[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no prompts to encode")
    return prompts
