"""Configurable thresholds of the producer checks, one model per stage.

The Qwen-Image report publishes no thresholds (docs/qwen_image.md §1), so every default here is our
choice, documented next to the field with the scale it applies to. Blur, texture and blockiness
are measured on the analysis copy (``DecodeConfig.analysis_short_side``, 384 px short side by
default): change that size and re-check those three. Reference points at 384 px, from three real
photographs and synthetic photo-like images: sharp photos score blur 100-1400, the same photos
with a Gaussian blur of sigma 1 px 60-240 and of sigma 2 px 10-36; texture 0.02-0.22 for photos
and 0.4-0.7 for noise; blockiness 1.01-1.24 at JPEG quality 90, 1.3-1.6 at 30, 1.8-2.6 at 10. Stages 3, 4, 6 and 7 add their models here
as their operators land (S4, S6 and S7 are defined next to their operators and gathered here).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.operators.balance import S7Thresholds
from pipelines.operators.faces import S6Thresholds
from pipelines.operators.text_ocr import S4Thresholds


class S1Thresholds(BaseModel):
    """Initial curation."""

    model_config = ConfigDict(extra="forbid")

    # Files under 2 kB are placeholders, icons and tracking pixels in web crawls.
    min_file_size_bytes: int = Field(default=2048, ge=0)
    # docs/qwen_image.md §1 (S1): resolution filter at 256 px short side (original size).
    min_short_side: int = Field(default=256, ge=1)
    # Near-duplicate pHash distance (out of 64 bits) used by the global pass; 0 = exact hash only.
    # Unrelated images sit around 32; re-encodes and resizes of one picture within a few bits.
    max_hamming_distance: int = Field(default=4, ge=0, le=16)
    # What a duplicate shares. "image": the hash alone (the same picture under two captions is one sample).
    # "image_and_caption": the hash and the caption, for sources whose captions tell apart images that the grey-level
    # hash cannot (the shape scenes: a red and a blue circle at one place hash alike).
    duplicate_scope: Literal["image", "image_and_caption"] = "image"
    # NSFW head probability (only checked when a head is configured: ClipScoresConfig.nsfw_head).
    max_nsfw: float = Field(default=0.5, ge=0, le=1)


class S2Thresholds(BaseModel):
    """Image quality."""

    model_config = ConfigDict(extra="forbid")

    # EXIF orientations 2..8 are corrected while decoding, so all pass by default; 1 drops every
    # image whose file needed a rotation or flip.
    max_orientation: int = Field(default=8, ge=1, le=8)
    # Variance of the 3x3 Laplacian of the grey analysis copy (384 px short side): drops images
    # about as soft as a Gaussian blur of sigma 2 px.
    min_blur: float = Field(default=50.0, ge=0)
    # Mean luma (BT.601) in [0, 1].
    min_luma: float = Field(default=0.08, ge=0, le=1)
    max_luma: float = Field(default=0.92, ge=0, le=1)
    # Mean HSV saturation in [0, 1]; natural photographs average 0.2-0.5.
    max_saturation: float = Field(default=0.8, ge=0, le=1)
    # Grey histogram entropy in bits (8 = uniform histogram); large flat areas score low.
    min_entropy: float = Field(default=3.5, ge=0, le=8)
    # Fraction of pixels whose |Laplacian| exceeds ``OperatorConfig.texture_laplacian_threshold``.
    max_texture: float = Field(default=0.35, ge=0, le=1)


class S3Thresholds(BaseModel):
    """Image-text alignment."""

    model_config = ConfigDict(extra="forbid")

    # Cosine similarity of the CLIP image and raw-caption embeddings. It depends on the CLIP model: LAION-5B kept
    # pairs above 0.28 with ViT-B/32; the default 0.0 only drops pairs the model finds opposed (and, with the
    # random tiny-clip of the tests and demo, about half the corpus). Set it for the model you configure.
    min_clip_alignment: float = Field(default=0.0, ge=-1, le=1)
    # Qwen2 tokens of the raw caption; the condition encoder keeps 1024 after the template, and captions past a
    # few hundred tokens are mostly scraped page text.
    max_caption_tokens: int = Field(default=512, ge=1)


class S5Thresholds(BaseModel):
    """High-resolution refinement (640p)."""

    model_config = ConfigDict(extra="forbid")

    # Fraction of grey pixels within 2 levels of black or white.
    max_exposure: float = Field(default=0.3, ge=0, le=1)
    # Same measure as S2's blur, stricter for 640p training (about a sigma 1 px blur).
    min_blur: float = Field(default=100.0, ge=0)
    # Block-boundary step over the next strongest step phase; quality 90 scores 1.0-1.2, quality 10
    # 1.7-2.6. Large images (decoded at 1/2 or 1/4) show blocking attenuated: a lower bound.
    max_blockiness: float = Field(default=1.4, ge=1)
    # docs/qwen_image.md §1 (S5): 640p stage; original short side.
    min_short_side: int = Field(default=640, ge=1)
    allow_qr_code: bool = False
    allow_barcode: bool = False
    allow_watermark: bool = False
    # Aesthetic head score (LAION predictor scale 1..10; only checked when a head is configured).
    min_aesthetic: float = Field(default=4.5)


class FilterThresholds(BaseModel):
    """All thresholds, one model per stage; the config object a producer job carries."""

    model_config = ConfigDict(extra="forbid")

    s1: S1Thresholds = Field(default_factory=S1Thresholds)
    s2: S2Thresholds = Field(default_factory=S2Thresholds)
    s3: S3Thresholds = Field(default_factory=S3Thresholds)
    s4: S4Thresholds = Field(default_factory=S4Thresholds)
    s5: S5Thresholds = Field(default_factory=S5Thresholds)
    s6: S6Thresholds = Field(default_factory=S6Thresholds)
    s7: S7Thresholds = Field(default_factory=S7Thresholds)
