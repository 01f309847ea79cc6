"""Fonts for the synthesiser: discovery through fontconfig plus configured files, and character-map checks.

Every face (each member of a ``.ttc`` collection counts) is loaded with its character map (fontTools). A text is
drawn only with a face whose map holds every one of its characters, so nothing is ever drawn as a tofu box; a
text that no face covers is discarded by the caller and counted.

Reading the character maps of Debian's Noto CJK collections takes fontTools about 8 s on two cores, and every
process that renders text (each synthesiser actor) needs them; so each font file's faces are also kept on disk, in
``$XDG_CACHE_HOME/qwen-image-ray/fonts`` (``~/.cache`` when unset), under a key of the file's path, size and
modification time: the first process reads the file, the others read the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile

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


CACHE_FORMAT = 1


def cache_folder() -> pathlib.Path:
    """Where the character maps of font files are kept between processes."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "qwen-image-ray" / "fonts"


def _cache_file(path: str) -> pathlib.Path:
    stat = pathlib.Path(path).stat()
    key = json.dumps([CACHE_FORMAT, str(pathlib.Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return cache_folder() / f"{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}.json"


def _ranges(codepoints: frozenset[int]) -> list[list[int]]:
    """Sorted code points as inclusive ``[first, last]`` runs."""
    runs: list[list[int]] = []
    for point in sorted(codepoints):
        if runs and point == runs[-1][1] + 1:
            runs[-1][1] = point
        else:
            runs.append([point, point])
    return runs


def _faces_to_json(faces: tuple[FontFace, ...]) -> str:
    return json.dumps(
        [{"index": f.index, "family": f.family, "style": f.style, "ranges": _ranges(f.codepoints)} for f in faces]
    )


def _faces_from_json(path: str, text: str) -> tuple[FontFace, ...]:
    return tuple(
        FontFace(
            path,
            int(face["index"]),
            face["family"],
            face["style"],
            frozenset(point for first, last in face["ranges"] for point in range(first, last + 1)),
        )
        for face in json.loads(text)
    )


@functools.lru_cache(maxsize=64)
def load_faces(path: str) -> tuple[FontFace, ...]:
    """The faces of one font file with their character maps; empty (and a warning) for an unreadable file.

    Read from the on-disk cache when it holds this file at its current size and modification time; otherwise read
    from the file and written to the cache (a cache that cannot be read or written is only a slower start).
    """
    try:
        cached = _cache_file(path)
    except OSError as error:
        logger.warning("skipping font file %s: %s", path, error)
        return ()
    try:
        return _faces_from_json(path, cached.read_text())
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("font cache %s unreadable (%s): reading %s again", cached, error, path)
    faces = read_faces(path)
    if faces:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=cached.parent, suffix=".tmp", delete=False) as handle:
                handle.write(_faces_to_json(faces))
            os.replace(handle.name, cached)  # atomic: a process reading at the same time sees all or nothing
        except OSError as error:
            logger.info("font cache not written (%s): every process reads %s itself", error, path)
    return faces


def read_faces(path: str) -> tuple[FontFace, ...]:
    """The faces of one font file read with fontTools; empty (and a warning) for an unreadable file."""
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
    """One library per process and font config (the character maps come from the on-disk cache after the first)."""
    return _cached_library(config.model_dump_json())


@functools.lru_cache(maxsize=8)
def _cached_library(config_json: str) -> FontLibrary:
    return FontLibrary(FontConfig.model_validate_json(config_json))
