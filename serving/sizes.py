"""Image sizes as the OpenAI images API writes them ("WxH"), checked against what the model can make.

Sides must be multiples of 16: the VAE downsamples by 8 and the transformer packs 2x2 latent patches into one token.
A pixel budget (not a side limit) bounds the cost, since the transformer's work grows with the number of tokens.
"""

from __future__ import annotations

import re

SIZE_MULTIPLE = 16
_SIZE = re.compile(r"^(\d{1,6})x(\d{1,6})$")


def parse_size(text: str, max_pixels: int) -> tuple[int, int]:
    """``"256x128"`` -> ``(256, 128)`` (width, height); ``ValueError`` says what is wrong and what is allowed."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"must look like 'WIDTHxHEIGHT' (for example '256x256'), got {text[:40]!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width < SIZE_MULTIPLE or height < SIZE_MULTIPLE or width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise ValueError(f"{width}x{height}: width and height must be positive multiples of {SIZE_MULTIPLE}")
    if width * height > max_pixels:
        raise ValueError(f"{width}x{height} has {width * height} pixels; this server allows at most {max_pixels}")
    return width, height
