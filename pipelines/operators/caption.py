"""Stage 3 caption operators: token length with the real tokenizer, invalid captions, and the caption split.

Columnar: ``CaptionScores`` takes a batch with ``caption`` (the raw caption of the source), ``caption_valid_utf8``
and, when annotation ran, ``ann_caption`` (the recaption), and adds:

- ``score_caption_tokens``: Qwen2 tokens of the raw caption (the condition encoder keeps at most 1024);
- ``score_caption_invalid``: 1.0 for an empty, mis-encoded, refusal or boilerplate caption, with the pattern that
  matched in ``caption_invalid_reason``;
- ``caption_raw`` / ``caption_recaption`` / ``caption_fused``: the three caption kinds the trainer samples from.
  The fused caption is the recaption with the raw caption appended when the raw one says something the recaption
  does not contain (names, quoted text); without a recaption it is the raw caption.
"""

from __future__ import annotations

import re

import numpy as np

from pipelines.operators.base import Check
from store.columns import (
    ANN_CAPTION,
    CAPTION,
    CAPTION_COLUMNS,
    CAPTION_FUSED,
    CAPTION_INVALID_REASON,
    CAPTION_RAW,
    CAPTION_RECAPTION,
    CAPTION_VALID_UTF8,
    SCORE_CAPTION_INVALID,
    SCORE_CAPTION_TOKENS,
)

# Refusals and boilerplate seen in web alt-text and in captioner output; matched case-insensitively at the start
# or as the whole caption. Each has a short name that becomes the drop reason.
INVALID_PATTERNS: tuple[tuple[str, str], ...] = (
    ("refusal", r"^\s*(sorry|i('m| am) sorry|i cannot|i can't|i can not|i'm unable|i am unable|as an ai)\b"),
    ("refusal_zh", r"^\s*(抱歉|对不起|我无法|我不能|作为一个?AI)"),
    (
        "placeholder",
        r"^\s*(image|photo|picture|img|untitled|no description|null|none|n/?a|undefined|default)\s*\d*\s*$",
    ),
    ("url", r"^\s*(https?://|www\.)\S+\s*$"),
    ("filename", r"^\s*\S+\.(jpe?g|png|gif|webp|bmp|tiff?)\s*$"),
    ("stock_boilerplate", r"(stock photo|royalty[- ]free|all rights reserved|image not found|click to enlarge)"),
)
_COMPILED = tuple((name, re.compile(pattern, re.IGNORECASE)) for name, pattern in INVALID_PATTERNS)
MIN_CAPTION_CHARS = 3


def invalid_caption_reason(caption: str, valid_utf8: bool = True) -> str:
    """Why a caption is unusable ("" when it is fine)."""
    if not valid_utf8:
        return "invalid_utf8"
    text = caption.strip()
    if len(text) < MIN_CAPTION_CHARS:
        return "empty"
    for name, pattern in _COMPILED:
        if pattern.search(text):
            return name
    return ""


def fuse_captions(raw: str, recaption: str) -> str:
    """The recaption plus the raw caption when the raw one adds something; the raw caption without recaption."""
    raw, recaption = raw.strip(), recaption.strip()
    if not recaption:
        return raw
    if not raw or raw.lower() in recaption.lower():
        return recaption
    return f"{recaption} {raw}"


class CaptionScores:
    """Callable for ``map_batches``: tokenizer loaded once per worker."""

    # The stage's contract (pipelines.contracts); the UTF-8 flag and the annotation's caption are read when there.
    READS: tuple[str, ...] = (CAPTION,)
    WRITES: tuple[str, ...] = CAPTION_COLUMNS

    def __init__(self) -> None:
        from models.tokenizer import build_qwen2_tokenizer

        self.tokenizer = build_qwen2_tokenizer()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = [str(text) for text in batch[CAPTION]]
        valid = batch.get(CAPTION_VALID_UTF8, np.ones(len(raw), dtype=bool))
        recaptions = [str(text) for text in batch[ANN_CAPTION]] if ANN_CAPTION in batch else [""] * len(raw)
        reasons = [invalid_caption_reason(text, bool(ok)) for text, ok in zip(raw, valid, strict=True)]
        # Token counts without the template: what the caption itself adds to the encoder's 1024-token budget.
        # Very long captions are cut before tokenising (a 100 kB caption is too long either way).
        token_counts = [len(ids) for ids in self.tokenizer([text[:20000] for text in raw]).input_ids] if raw else []
        fused = [fuse_captions(r, c) for r, c in zip(raw, recaptions, strict=True)]
        return {
            **batch,
            SCORE_CAPTION_TOKENS: np.array(token_counts, dtype=np.float64),
            SCORE_CAPTION_INVALID: np.array([1.0 if reason else 0.0 for reason in reasons]),
            CAPTION_INVALID_REASON: np.array([f"caption_invalid:{r}" if r else "" for r in reasons], dtype=object),
            CAPTION_RAW: np.array(raw, dtype=object),
            CAPTION_RECAPTION: np.array(recaptions, dtype=object),
            CAPTION_FUSED: np.array(fused, dtype=object),
        }


def caption_checks() -> tuple[Check, ...]:
    """Stage-3 checks over the caption scores (thresholds in ``FilterThresholds.s3``)."""
    return (
        Check(
            name="caption_invalid",
            stage=3,
            column=SCORE_CAPTION_INVALID,
            bounds=lambda t: (None, 0.0),
            low_reason="caption_invalid",
            high_reason="caption_invalid",
            detail_column=CAPTION_INVALID_REASON,
        ),
        Check(
            name="caption_tokens",
            stage=3,
            column=SCORE_CAPTION_TOKENS,
            bounds=lambda t: (None, float(t.s3.max_caption_tokens)),
            low_reason="caption_tokens:too_short",
            high_reason="caption_tokens:too_long",
        ),
    )
