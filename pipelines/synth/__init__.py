"""Text-rendering synthesis (docs/qwen_image.md §3): pure, compositional and complex images with known text.

- ``config``: ``SynthConfig`` (modes, curriculum, fonts, output) and the Chinese character tiers;
- ``fonts``: faces from fontconfig and configured files, with character-map checks (no tofu);
- ``text``: real words by frequency (``wordfreq``), numbers, punctuation, GB2312 / GBK tiers;
- ``layout``: line breaking, fitting into a box, reading order; ``captions``: named colours and templates;
- ``pure`` / ``compositional`` / ``complex`` (templates in ``templates.json``): the three modes;
- ``generator``: per-row seeded samples with discard counting; ``source``: the Ray Data source;
- ``verify``: OCR read-back and character accuracy; ``preview``: contact sheets per mode.
"""

from __future__ import annotations

from pipelines.synth.config import SynthConfig
from pipelines.synth.preview import write_preview
from pipelines.synth.source import synthetic_dataset
from store.columns import RENDERED_TEXT

__all__ = ["RENDERED_TEXT", "SynthConfig", "synthetic_dataset", "write_preview"]
