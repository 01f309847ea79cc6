"""Fonts for the synthesiser: discovery through fontconfig plus configured files, and character-map checks.

Every face (each member of a ``.ttc`` collection counts) is loaded with its character map (fontTools). A text is
drawn only with a face whose map holds every one of its characters, so nothing is ever drawn as a tofu box; a
text that no face covers is discarded by the caller and counted.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
import shutil
import subprocess

import numpy as np
from fontTools.ttLib import TTCollection, TTFont, TTLibError
from PIL import ImageFont

from models.ocr import is_han
from pipelines.synth.config import FontConfig

logger = logging.getLogger(__name__)
FONT_SUFFIXES: tuple[str, ...] = (".ttf", ".otf", ".ttc", ".otc")
WEIGHT_WORDS: tuple[str, ...] = ("Bold", "Black", "Heavy", "SemiBold", "Medium")


@dataclasses.dataclass(frozen=True)
class FontFace:
    """One face: a file and its index in the collection, with the code points its character map covers."""

    path: str
    index: int
    family: str
    style: str
    codepoints: frozenset[int]

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}".strip()

    @property
    def is_bold(self) -> bool:
        return any(word.lower() in self.style.lower() for word in WEIGHT_WORDS)

    @property
    def is_serif(self) -> bool:
        return "serif" in self.family.lower() and "sans" not in self.family.lower()

    def covers(self, text: str) -> bool:
        return all(ord(char) in self.codepoints for char in text if not char.isspace())

    def font(self, size: int) -> ImageFont.FreeTypeFont:
        return _truetype(self.path, self.index, int(size))


@functools.lru_cache(maxsize=512)
def _truetype(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, index=index)


def fontconfig_files() -> list[str]:
    """Font files fontconfig knows (``fc-list``); empty when fontconfig is not installed."""
    if shutil.which("fc-list") is None:
        logger.warning("fc-list not found: no system fonts discovered (install fontconfig, or set fonts.files)")
        return []
    try:
        listed = subprocess.run(["fc-list", "-f", "%{file}\n"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning("fc-list failed (%s): no system fonts discovered", error)
        return []
    return sorted({line.strip() for line in listed.splitlines() if line.strip().lower().endswith(FONT_SUFFIXES)})


def _name(font: TTFont, name_id: int) -> str:
    record = font["name"].getDebugName(name_id) if "name" in font else None
    return record or ""


@functools.lru_cache(maxsize=64)
def load_faces(path: str) -> tuple[FontFace, ...]:
    """The faces of one font file with their character maps; empty (and a warning) for an unreadable file."""
    try:
        if path.lower().endswith((".ttc", ".otc")):
            fonts = list(TTCollection(path, lazy=True).fonts)
        else:
            fonts = [TTFont(path, lazy=True)]
        faces = []
        for index, font in enumerate(fonts):
            cmap = font.getBestCmap() or {}
            family = _name(font, 16) or _name(font, 1)
            style = _name(font, 17) or _name(font, 2)
            faces.append(FontFace(path, index, family, style, frozenset(cmap)))
        return tuple(faces)
    except (OSError, TTLibError, KeyError, AssertionError, ValueError) as error:
        logger.warning("skipping font file %s: %s", path, error)
        return ()


class FontLibrary:
    """The configured faces; picks one that covers a text, with a preference for weight, serif and Chinese shapes."""

    def __init__(self, config: FontConfig):
        self.config = config
        for path in config.files:
            if not pathlib.Path(path).is_file():
                raise ValueError(f"font file {path!r} in fonts.files does not exist")
        paths = (fontconfig_files() if config.discover else []) + list(config.files)
        faces: list[FontFace] = []
        seen: set[tuple[str, int]] = set()
        for path in dict.fromkeys(paths):
            for face in load_faces(path):
                excluded = path not in config.files and any(word in face.name for word in config.exclude)
                if (face.path, face.index) not in seen and face.codepoints and not excluded:
                    seen.add((face.path, face.index))
                    faces.append(face)
        if not faces:
            raise ValueError(
                "no usable font: install fonts (Debian: apt-get install fonts-noto-cjk fontconfig) "
                "or list font files in fonts.files"
            )
        self.faces: tuple[FontFace, ...] = tuple(faces)

    def missing(self, text: str) -> set[str]:
        """Characters of ``text`` (whitespace aside) that no face can draw."""
        return {
            char for char in set(text) if not char.isspace() and not any(ord(char) in f.codepoints for f in self.faces)
        }

    def candidates(self, text: str, style: str = "any") -> list[FontFace]:
        """Faces covering all of ``text``; ``style`` is ``any``, ``regular``, ``bold``, ``serif`` or ``sans``.

        The style narrows the list only where some covering face has it; Chinese text prefers ``zh_prefer``.
        """
        covering = [face for face in self.faces if face.covers(text)]
        if any(is_han(char) for char in text):
            preferred = [f for f in covering if any(word in f.family for word in self.config.zh_prefer)]
            covering = preferred or covering
        wanted = {
            "bold": lambda face: face.is_bold,
            "regular": lambda face: not face.is_bold,
            "serif": lambda face: face.is_serif,
            "sans": lambda face: not face.is_serif,
        }.get(style)
        if wanted is not None:
            covering = [face for face in covering if wanted(face)] or covering
        return covering

    def pick(self, rng: np.random.Generator, text: str, style: str = "any") -> FontFace | None:
        """A face drawn uniformly from ``candidates``; None when no face covers ``text``."""
        covering = self.candidates(text, style)
        return covering[int(rng.integers(len(covering)))] if covering else None


def font_library(config: FontConfig) -> FontLibrary:
    """One library per process and font config (character maps cost about 0.1 s per CJK face)."""
    return _cached_library(config.model_dump_json())


@functools.lru_cache(maxsize=8)
def _cached_library(config_json: str) -> FontLibrary:
    return FontLibrary(FontConfig.model_validate_json(config_json))
