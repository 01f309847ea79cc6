"""Text-rendering prompts and their scores: ChineseWord-style characters per tier, LongText-style EN / ZH texts.

ChineseWord (docs/qwen_image.md §9): one prompt per character; an image is correct when the Han characters OCR reads in
it are exactly the target character (one more or one other character is wrong). Tiers are the synthesiser's
(``pipelines.synth.config``: GB2312 level 1, level 2, GBK-only), standing in for the General Standard table's levels.

LongText-Bench-style accuracy: matched units over expected units, units being lower-cased words (letters and digits)
in English and Han characters in Chinese; matching is a multiset intersection, so order and layout do not count and
a unit read twice counts once.
"""

from __future__ import annotations

import collections
import re
import unicodedata

import numpy as np

from models.ocr import is_han
from pipelines.synth.config import SynthConfig
from pipelines.synth.text import TextSampler, character_tiers
from pipelines.synth.verify import normalise
from store import columns as C

CHARS = "chars"
TEXT_EN = "text_en"
TEXT_ZH = "text_zh"
CLIP = "clip"
SCENES = "scenes"  # shape scenes, scored by the judge (training.evaluation.judge), not by OCR
_WORD = re.compile(r"[^\W_]+")


def han_characters(text: str) -> str:
    return "".join(char for char in normalise(text) if is_han(char))


def char_correct(target: str, read: str) -> float:
    """1.0 when the Han characters read are exactly ``target``, else 0.0."""
    return float(han_characters(read) == target)


def words(text: str) -> list[str]:
    """Lower-cased words of letters and digits after NFKC; Han characters separate words and are not counted."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return _WORD.findall("".join(" " if is_han(char) else char for char in folded))


def longtext_accuracy(expected: str, read: str, language: str) -> float:
    """Matched units over expected units (1.0 for an empty expectation read as nothing)."""
    if language == "zh":
        wanted, found = list(han_characters(expected)), list(han_characters(read))
    else:
        wanted, found = words(expected), words(read)
    if not wanted:
        return float(not found)
    matched = collections.Counter(wanted) & collections.Counter(found)
    return sum(matched.values()) / len(wanted)


def char_rows(tiers: list[str], num_per_tier: int, template: str, seed: int) -> list[dict]:
    """One row per character: ``num_per_tier`` distinct characters of each tier, drawn with ``seed``."""
    rows = []
    for rank, tier in enumerate(tiers):
        chars = character_tiers()[tier]
        rng = np.random.default_rng([seed, rank])
        for index in rng.choice(len(chars), size=min(num_per_tier, len(chars)), replace=False):
            char = chars[int(index)]
            rows.append(
                {C.EVAL_TASK: CHARS, C.EVAL_GROUP: tier, C.EVAL_PROMPT: template.format(char), C.EVAL_EXPECTED: char}
            )
    return rows


def text_rows(language: str, num_prompts: int, template: str, seed: int) -> list[dict]:
    """Prompts quoting a line of real words (the synthesiser's text sampler, three to five words or numbers)."""
    sampler = TextSampler(SynthConfig(seed=seed, tier_mix={"gb2312_level1": 1.0}))
    rng = np.random.default_rng([seed, 7 if language == "en" else 8])
    rows = []
    for _ in range(num_prompts):
        text = sampler.line(rng, language, int(rng.integers(3, 6)))
        task = TEXT_EN if language == "en" else TEXT_ZH
        rows.append(
            {C.EVAL_TASK: task, C.EVAL_GROUP: language, C.EVAL_PROMPT: template.format(text), C.EVAL_EXPECTED: text}
        )
    return rows


def score(task: str, expected: str, read: str) -> float:
    """The row's score by task (NaN for a task OCR does not score)."""
    if task == CHARS:
        return char_correct(expected, read)
    if task in (TEXT_EN, TEXT_ZH):
        return longtext_accuracy(expected, read, "en" if task == TEXT_EN else "zh")
    return float("nan")
