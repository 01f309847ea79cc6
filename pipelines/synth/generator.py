"""One mode's sample generator: per-row seeds, retries on discarded paragraphs, backgrounds, encoding.

Every sample is a pure function of ``(config, mode, row key)``: its generator is seeded with
``[seed, mode index, *row key]``, so samples do not depend on batching, worker or order. A drawn text that cannot be
rendered (a character no face covers, or too long for the canvas at the smallest size) is discarded whole, counted,
and another is drawn; after ``max_attempts`` the sample is reported failed (empty image, ``source_error``).

    from pipelines.synth import SynthConfig
    from pipelines.synth.generator import SynthGenerator
    sample = SynthGenerator(SynthConfig(resolutions=[(640, 640)]), "pure").generate((0,))
"""

from __future__ import annotations

import collections
import dataclasses
import logging

import numpy as np

from pipelines.decode import DecodeConfig, decode_image
from pipelines.synth.complex import render_complex
from pipelines.synth.compositional import render_compositional
from pipelines.synth.config import MODES, SynthConfig
from pipelines.synth.pure import render_pure
from pipelines.synth.render import Discarded, RenderContext, cover
from pipelines.synth.sample_corpus import photo_like

logger = logging.getLogger(__name__)
RENDERERS = {"pure": render_pure, "compositional": render_compositional, "complex": render_complex}


@dataclasses.dataclass(frozen=True)
class SynthSample:
    """A generated sample; ``image`` is None (and ``error`` set) when every attempt was discarded."""

    image: np.ndarray | None
    rendered_text: str
    caption: str
    language: str
    num_discarded: int
    error: str = ""


class SynthGenerator:
    """Generates samples of one mode; ``stats`` counts discarded texts by reason in this process."""

    def __init__(self, config: SynthConfig, mode: str):
        if mode not in MODES:
            raise ValueError(f"unknown synthesis mode {mode!r}: use one of {', '.join(MODES)}")
        self.config = config
        self.mode = mode
        self.context = RenderContext.build(config)
        self.stats: collections.Counter[str] = collections.Counter()
        self._warned_background = False
        self._told_generated = False

    def rng(self, row_key: tuple[int, ...]) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, MODES.index(self.mode), *row_key])

    def background(self, rng: np.random.Generator, width: int, height: int, data: bytes | None) -> np.ndarray:
        """The background image for compositional mode: ``data`` decoded and cropped, else a photo-like one."""
        if not data and not self._told_generated:
            logger.info("compositional mode without a background image: compositing onto photo-like generated ones")
            self._told_generated = True
        if data:
            decoded = decode_image(data, DecodeConfig(analysis_short_side=max(32, min(width, height))))
            if decoded.ok and decoded.image is not None and min(decoded.image.shape[:2]) >= 16:
                return cover(decoded.image, width, height, rng)
            if not self._warned_background:
                logger.warning("undecodable background (%s): using a generated one instead", decoded.drop_reason)
                self._warned_background = True
        return photo_like(rng, height, width)

    def generate(self, row_key: tuple[int, ...], background: bytes | None = None) -> SynthSample:
        """The sample of ``row_key`` (non-negative ints), over ``background`` bytes in compositional mode."""
        rng = self.rng(row_key)
        width, height = self.config.resolutions[int(rng.integers(len(self.config.resolutions)))]
        scene = self.background(rng, width, height, background) if self.mode == "compositional" else None
        num_discarded, reason = 0, ""
        for _ in range(self.config.max_attempts):
            try:
                rendered = RENDERERS[self.mode](self.context, rng, width, height, scene)
            except Discarded as discarded:
                num_discarded += 1
                reason = discarded.reason
                self.stats[discarded.reason] += 1
                continue
            return SynthSample(
                rendered.image, rendered.rendered_text, rendered.caption, rendered.language, num_discarded
            )
        return SynthSample(None, "", "", "", num_discarded, f"synth:{reason}")


def generate_samples(config: SynthConfig, mode: str, num_samples: int, start: int = 0) -> list[SynthSample]:
    """Rows ``start .. start + num_samples`` of a mode, in this process (previews, tests, benchmarks)."""
    generator = SynthGenerator(config, mode)
    return [generator.generate((row,)) for row in range(start, start + num_samples)]
