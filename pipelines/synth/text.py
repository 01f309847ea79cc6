"""Text sources of the synthesiser: real words by frequency, numbers, punctuation, Chinese character tiers.

English and Chinese words are the most frequent ones of ``wordfreq`` (its frequency lists ship inside the wheel,
nothing is downloaded). Chinese words are grouped by their rarest character's tier (see ``pipelines.synth.config``
for the GB2312 / GBK tiers and why they stand in for the General Standard table); a tier with too few words is
drawn as random characters of that tier. Units follow the curriculum: a word, a line (a phrase of a few words,
sometimes with a number), or a paragraph (sentences with punctuation).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re

import numpy as np

from models.ocr import is_han
from pipelines.synth.config import SynthConfig

TIERS: tuple[str, ...] = ("gb2312_level1", "gb2312_level2", "gbk_extra")
MIN_WORDS_PER_TIER = 200  # below this a tier is drawn as characters, not words
_ENGLISH_WORD = re.compile(r"[a-z]{2,}|a|i")
# Frequency lists come from web text: words no caption should put in an image are left out (substrings for the
# unambiguous stems, whole words for the short ones that are parts of innocent words).
BLOCKED_STEMS_EN: tuple[str, ...] = (
    "fuck", "shit", "cunt", "porn", "nigg", "fagg", "masturb", "pussy", "whore", "slut", "bitch", "penis",
    "vagina", "boob", "horny", "dildo", "orgasm", "erotic", "hentai", "rapist", "blowjob", "nazi",
)  # fmt: skip
BLOCKED_WORDS_EN: frozenset[str] = frozenset(
    "sex sexy sexual rape raped raping cock cocks dick dicks tit tits cum anal nude nudes naked fag fags ass asses "
    "asshole bastard milf xxx wank twat jizz retard retarded".split()
)
BLOCKED_STEMS_ZH: tuple[str, ...] = (
    "操你", "妈的", "傻逼", "屌", "婊", "妓", "淫", "鸡巴", "做爱", "色情", "性交", "强奸", "裸", "卖淫", "嫖",
)  # fmt: skip


def _decode_rows(codec: str, leads: range, trails: list[int]) -> list[str]:
    chars = []
    for lead in leads:
        for trail in trails:
            try:
                char = bytes([lead, trail]).decode(codec)
            except UnicodeDecodeError:
                continue
            if is_han(char):
                chars.append(char)
    return chars


@functools.lru_cache(maxsize=1)
def character_tiers() -> dict[str, tuple[str, ...]]:
    """``{tier: characters}``: GB2312 level 1 (3,755), level 2 (3,008), GBK-only Han characters (the rare tier)."""
    cells = list(range(0xA1, 0xFF))
    level1 = _decode_rows("gb2312", range(0xB0, 0xD8), cells)
    level2 = _decode_rows("gb2312", range(0xD8, 0xF8), cells)
    in_gb2312 = set(level1) | set(level2)
    gbk = _decode_rows("gbk", range(0x81, 0xFF), [t for t in range(0x40, 0xFF) if t != 0x7F])
    extra = sorted(set(gbk) - in_gb2312)
    return {"gb2312_level1": tuple(level1), "gb2312_level2": tuple(level2), "gbk_extra": tuple(extra)}


@functools.lru_cache(maxsize=1)
def _tier_of_char() -> dict[str, int]:
    return {char: rank for rank, tier in enumerate(TIERS) for char in character_tiers()[tier]}


def char_tier(char: str) -> str | None:
    """The tier of one character, None outside GBK."""
    rank = _tier_of_char().get(char)
    return None if rank is None else TIERS[rank]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    english: tuple[str, ...]
    chinese: dict[str, tuple[str, ...]]  # tier -> words whose rarest character is in that tier


@functools.lru_cache(maxsize=4)
def vocabulary(num_words_en: int, num_words_zh: int) -> Vocabulary:
    """The most frequent words of ``wordfreq``: English lower-case words, Chinese words grouped by tier."""
    import wordfreq

    english = tuple(
        word
        for word in wordfreq.top_n_list("en", num_words_en)
        if _ENGLISH_WORD.fullmatch(word)
        and word not in BLOCKED_WORDS_EN
        and not any(stem in word for stem in BLOCKED_STEMS_EN)
    )
    tier_rank = _tier_of_char()
    chinese: dict[str, list[str]] = {tier: [] for tier in TIERS}
    for word in wordfreq.top_n_list("zh", num_words_zh):
        ranks = [tier_rank.get(char) for char in word]
        if word and None not in ranks and not any(stem in word for stem in BLOCKED_STEMS_ZH):
            chinese[TIERS[max(ranks)]].append(word)
    return Vocabulary(english, {tier: tuple(words) for tier, words in chinese.items()})


@functools.lru_cache(maxsize=4)
def _file_paragraphs(paths: tuple[str, ...]) -> tuple[str, ...]:
    paragraphs: list[str] = []
    for path in paths:
        file = pathlib.Path(path)
        if not file.is_file():
            raise ValueError(f"text file {path!r} in text_files does not exist")
        text = file.read_bytes().decode("utf-8", "replace")
        paragraphs.extend(line.strip() for line in text.splitlines() if line.strip())
    if not paragraphs:
        raise ValueError(f"text_files {list(paths)} hold no non-empty line")
    return tuple(paragraphs)


def _weights(mix: dict[str, float]) -> tuple[list[str], np.ndarray]:
    keys = list(mix)
    weights = np.array([mix[key] for key in keys], dtype=np.float64)
    return keys, weights / weights.sum()


def draw(rng: np.random.Generator, mix: dict[str, float]) -> str:
    """One key of a weight mapping, drawn by weight."""
    keys, weights = _weights(mix)
    return keys[int(rng.choice(len(keys), p=weights))]


class TextSampler:
    """Draws texts for one config; deterministic for a given generator state."""

    def __init__(self, config: SynthConfig):
        self.config = config
        self.vocabulary = vocabulary(config.num_words_en, config.num_words_zh)
        self.tiers = character_tiers()
        self.paragraphs = _file_paragraphs(tuple(config.text_files)) if config.text_files else ()

    # Words.
    def english_word(self, rng: np.random.Generator) -> str:
        words = self.vocabulary.english
        return words[int(rng.integers(len(words)))]

    def chinese_word(self, rng: np.random.Generator) -> str:
        tier = draw(rng, self.config.tier_mix)
        words = self.vocabulary.chinese[tier]
        if len(words) >= MIN_WORDS_PER_TIER:
            return words[int(rng.integers(len(words)))]
        chars = self.tiers[tier]
        return "".join(chars[int(rng.integers(len(chars)))] for _ in range(int(rng.integers(1, 3))))

    def number(self, rng: np.random.Generator, language: str) -> str:
        kind = int(rng.integers(6))
        if kind == 0:
            return str(int(rng.integers(1900, 2031))) + ("年" if language == "zh" else "")
        if kind == 1:
            symbol = "¥" if language == "zh" else "$"
            return f"{symbol}{rng.integers(1, 1000)}" + (f".{rng.integers(0, 100):02d}" if rng.random() < 0.5 else "")
        if kind == 2:
            return f"{rng.integers(1, 100)}%"
        if kind == 3:
            return f"{rng.integers(0, 24)}:{rng.integers(0, 60):02d}"
        if kind == 4 and language == "zh":
            return f"{rng.integers(1, 13)}月{rng.integers(1, 29)}日"
        return str(int(rng.integers(1, 10000)))

    def _slot(self, rng: np.random.Generator, language: str) -> str:
        if rng.random() < self.config.number_ratio:
            return self.number(rng, language)
        return self.chinese_word(rng) if language == "zh" else self.english_word(rng)

    # Units.
    def word(self, rng: np.random.Generator, language: str) -> str:
        if language == "zh":
            return self.chinese_word(rng)
        if language == "mixed":
            return self.chinese_word(rng) + " " + self._case(rng, self.english_word(rng))
        return self._case(rng, self.english_word(rng))

    def line(self, rng: np.random.Generator, language: str, num_words: int | None = None) -> str:
        if language == "zh":
            return "".join(self._slot(rng, "zh") for _ in range(num_words or int(rng.integers(2, 6))))
        if language == "mixed":
            head = "".join(self.chinese_word(rng) for _ in range(int(rng.integers(1, 4))))
            tail = "".join(self.chinese_word(rng) for _ in range(int(rng.integers(0, 3))))
            middle = " ".join(self._case(rng, self._slot(rng, "en")) for _ in range(int(rng.integers(1, 3))))
            return f"{head} {middle} {tail}".strip()
        words = [self._slot(rng, "en") for _ in range(num_words or int(rng.integers(2, 7)))]
        style = rng.random()
        if style < 0.45:
            return " ".join(word.capitalize() for word in words)
        if style < 0.55:
            return " ".join(words).upper()
        return " ".join(words).capitalize()

    def paragraph(self, rng: np.random.Generator, language: str) -> str:
        sentences = []
        for _ in range(int(rng.integers(2, 5))):
            if language == "en":
                clauses = [" ".join(self._slot(rng, "en") for _ in range(int(rng.integers(3, 8))))]
                if rng.random() < 0.4:
                    clauses.append(" ".join(self._slot(rng, "en") for _ in range(int(rng.integers(2, 6)))))
                sentences.append(", ".join(clauses).capitalize() + ("?" if rng.random() < 0.1 else "."))
            else:
                clauses = [self.line(rng, language, int(rng.integers(2, 5))) for _ in range(int(rng.integers(1, 3)))]
                sentences.append("，".join(clauses) + ("？" if rng.random() < 0.1 else "。"))
        return (" " if language == "en" else "").join(sentences)

    def text(self, rng: np.random.Generator, unit: str, language: str) -> str:
        """A text of ``unit`` in ``language``, or a paragraph of the text files (``text_file_ratio``)."""
        if self.paragraphs and rng.random() < self.config.text_file_ratio:
            return self.paragraphs[int(rng.integers(len(self.paragraphs)))]
        if unit == "word":
            return self.word(rng, language)
        if unit == "line":
            return self.line(rng, language)
        return self.paragraph(rng, language)

    @staticmethod
    def _case(rng: np.random.Generator, word: str) -> str:
        style = rng.random()
        return word.upper() if style < 0.2 else word.capitalize() if style < 0.6 else word
