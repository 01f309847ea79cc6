"""Prompt templates, token counts with the real Qwen2 vocabulary, and the drop / mask / padding rules."""

from __future__ import annotations

import pytest
import torch

from models.condition_encoder import EDIT_TEMPLATE, T2I_TEMPLATE, ConditionEncoder, pad_prompt_embeds
from models.tokenizer import QWEN_ADDED_TOKENS


def test_prompt_prefix_token_counts(tokenizer):
    t2i_prefix = T2I_TEMPLATE.prefix
    assert t2i_prefix.endswith("<|im_start|>user\n")
    assert len(tokenizer(t2i_prefix).input_ids) == 34 == T2I_TEMPLATE.drop

    edit_prefix = EDIT_TEMPLATE.prefix
    assert EDIT_TEMPLATE.text[len(edit_prefix) :].startswith("<|vision_start|>")
    assert len(tokenizer(edit_prefix).input_ids) == 64 == EDIT_TEMPLATE.drop


def test_released_token_ids(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_ADDED_TOKENS))
    assert ids == list(range(151643, 151657))
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 151644
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645
    # Ids of the released Qwen2 tokenizer for ordinary text: words, a CJK pair, single digits.
    assert tokenizer("Hello world").input_ids == [9707, 1879]
    assert tokenizer("123").input_ids == [16, 17, 18]
    assert tokenizer.decode(tokenizer("你好, 世界 ok").input_ids) == "你好, 世界 ok"


def test_drop_mask_and_padding(tiny_components):
    encoder = ConditionEncoder(tiny_components.text_encoder, tiny_components.tokenizer)
    prompts = ["a cat", "a long prompt about a red fox jumping over a lazy dog in the snow"]
    embeds = encoder.encode(prompts)
    tokenizer = tiny_components.tokenizer
    # After the drop each prompt keeps its own tokens plus the closing "<|im_end|>\n<|im_start|>assistant\n".
    expected = [len(tokenizer(T2I_TEMPLATE.format(p)).input_ids) - 34 for p in prompts]
    assert embeds.lengths == expected
    assert embeds.embeds.shape == (2, max(expected), encoder.hidden_size)
    assert embeds.mask.dtype == torch.long
    assert torch.equal(embeds.mask[0], (torch.arange(max(expected)) < expected[0]).long())
    assert embeds.embeds[0, expected[0] :].abs().sum() == 0  # zero padding

    # The short prompt's embedding does not depend on what it is batched with.
    alone = encoder.encode(prompts[:1])
    torch.testing.assert_close(alone.embeds[0], embeds.embeds[0, : expected[0]], atol=1e-5, rtol=1e-5)

    # Round trip through the store's unpadded form.
    repadded = pad_prompt_embeds(embeds.unpadded())
    assert torch.equal(repadded.embeds, embeds.embeds) and torch.equal(repadded.mask, embeds.mask)


def test_truncates_to_1024_prompt_tokens(tiny_components):
    encoder = ConditionEncoder(tiny_components.text_encoder, tiny_components.tokenizer)
    tokens = encoder.tokenize(["word " * 3000])
    assert tokens.input_ids.shape[1] == 1024 + 34


def test_edit_drop_keeps_image_and_instruction(tiny_components):
    import numpy as np

    encoder = ConditionEncoder(tiny_components.text_encoder, tiny_components.tokenizer, template="edit")
    images = [np.full((56, 84, 3), 200, dtype=np.uint8), np.zeros((112, 56, 3), dtype=np.uint8)]
    prompts = ["make the sky red", "add a hat"]
    inputs = encoder.processor(
        text=[EDIT_TEMPLATE.format(p) for p in prompts], images=images, padding=True, return_tensors="pt"
    )
    # Position 64 (the first kept token) is <|vision_start|> in every row: the drop removes exactly the system part.
    assert (inputs["input_ids"][:, 64] == 151652).all()
    embeds = encoder.encode_edit(prompts, images)
    assert embeds.lengths == (inputs["attention_mask"].sum(dim=1) - 64).tolist()
    # The image is in the condition: another image changes the embedding of the same instruction.
    other = encoder.encode_edit(prompts[:1], [np.full((56, 84, 3), 30, dtype=np.uint8)])
    assert (other.embeds[0] - embeds.embeds[0, : other.lengths[0]]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="t2i template"):
        ConditionEncoder(tiny_components.text_encoder, tiny_components.tokenizer).encode_edit(prompts, images)
