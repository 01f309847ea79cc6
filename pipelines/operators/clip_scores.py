"""CLIP-embedding operators, one image embedding per sample shared by all of them.

- S3 alignment: cosine similarity of the image and its raw caption (open_clip; the report used Chinese-CLIP and
  SigLIP 2; any open_clip model with a local weights file works here);
- S1 NSFW: a pluggable head over the image embedding giving a probability;
- S5 aesthetic: a pluggable head over the image embedding giving a score (LAION's predictor scale, 1 to 10).

No CLIP model is configured by default (``ClipScoresConfig.clip`` is None): a random model must never keep or drop
real data, so alignment, NSFW and aesthetic are then disabled with one warning (their columns NaN, their checks left
out, the funnel says so). ``clip: {model_name: <open_clip name>, weights_path: <local file>}`` switches them on;
``clip: {model_name: tiny-clip}`` (random weights) is for tests and the demo, which ask for it by name.

Heads are small MLPs read from a local safetensors file (``layers.{i}.weight`` / ``layers.{i}.bias``, ReLU
between layers; see ``models.embedding_head.EmbeddingHead``), so published predictors can be converted once and loaded offline. A head
that is not configured is disabled with one logged warning: its column is NaN and its check is left out of the
stage computation (``clip_checks``), so nothing is silently dropped by it.

torch, open_clip and the heads (``models.embedding_head``) are imported by the ``ClipScores`` actor only: a run without
a CLIP model, and the tasks that import this module for ``disabled_clip_columns``, never load them.
"""

from __future__ import annotations

import logging

import numpy as np
import pydantic

from models.clip import ClipConfig
from models.config import StrictModel
from pipelines.decode import DecodeConfig, decode_image
from pipelines.operators.base import Check
from pipelines.pools import PoolConfig
from store import columns as C

logger = logging.getLogger(__name__)


class ClipScoresConfig(StrictModel):
    clip: ClipConfig | None = None  # None: no CLIP model, the CLIP operators are disabled (see the module docstring)
    nsfw_head: str | None = None  # safetensors file; output is a logit (sigmoid -> probability)
    aesthetic_head: str | None = None  # safetensors file; output is the aesthetic score
    image_short_side: int = pydantic.Field(default=256, ge=32)  # decode size; CLIP resizes to its own input
    keep_embeddings: bool = True
    pool: PoolConfig = PoolConfig(batch_size=32)

    @pydantic.model_validator(mode="after")
    def _heads_need_a_model(self) -> ClipScoresConfig:
        for name in ("nsfw_head", "aesthetic_head"):
            if getattr(self, name) and self.clip is None:
                raise ValueError(f"{name} is a head over CLIP embeddings: configure clip (model_name, weights_path)")
        return self

    def disabled_note(self) -> str | None:
        """Why the CLIP operators do not run, for the log and the funnel; None when they do."""
        if self.clip is not None:
            return None
        return (
            "no CLIP model configured (clip.clip: model_name + weights_path): CLIP alignment, NSFW and aesthetic "
            "are disabled, their scores NaN and their checks left out"
        )


def disabled_clip_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The CLIP score columns, all NaN, for a run without a CLIP model (``ClipScoresConfig.clip`` None)."""
    count = len(batch[C.SAMPLE_ID])
    return {**batch, **{name: np.full(count, np.nan) for name in C.CLIP_SCORES}}


# The contract of disabled_clip_columns (pipelines.contracts): it writes C.CLIP_SCORES.
DISABLED_CLIP_READS: tuple[str, ...] = (C.SAMPLE_ID,)


class ClipScores:
    """Ray Data actor: image bytes + raw caption -> alignment, NSFW, aesthetic (and the embedding)."""

    # The stage's contract (pipelines.contracts); the embedding column too when ``keep_embeddings``.
    READS: tuple[str, ...] = (C.IMAGE_BYTES, C.CAPTION)
    WRITES: tuple[str, ...] = C.CLIP_SCORES

    def __init__(self, config: ClipScoresConfig):
        if config.clip is None:
            raise ValueError(config.disabled_note())
        import torch

        from models.clip import ClipModel
        from models.embedding_head import EmbeddingHead

        self.config = config
        device = "cuda" if config.pool.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.clip = ClipModel(config.clip, device=device)
        self.nsfw = EmbeddingHead.load(config.nsfw_head, self.clip.embed_dim) if config.nsfw_head else None
        self.aesthetic = (
            EmbeddingHead.load(config.aesthetic_head, self.clip.embed_dim) if config.aesthetic_head else None
        )
        for name, head in (("NSFW", self.nsfw), ("aesthetic", self.aesthetic)):
            if head is None:
                logger.warning("%s head not configured: the %s operator is disabled (scores NaN, no check)", name, name)
        self.decode_config = DecodeConfig(analysis_short_side=config.image_short_side)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch[C.IMAGE_BYTES])
        alignment, nsfw, aesthetic = (np.full(count, np.nan) for _ in range(3))
        embeddings = np.full((count, self.clip.embed_dim), np.nan, dtype=np.float16)
        rows, images = [], []
        for row, data in enumerate(batch[C.IMAGE_BYTES]):
            decoded = decode_image(bytes(data), self.decode_config)
            if decoded.ok:
                rows.append(row)
                images.append(decoded.image)
        if rows:
            image_embeds = self.clip.encode_images(images)
            text_embeds = self.clip.encode_texts([str(batch[C.CAPTION][row]) for row in rows])
            alignment[rows] = (image_embeds * text_embeds).sum(-1).numpy()
            # An edit instruction does not describe its target image: alignment is not measured there (NaN).
            tasks = batch.get(C.TASK)
            if tasks is not None:
                alignment[[row for row in rows if tasks[row] != C.T2I]] = np.nan
            embeddings[rows] = image_embeds.numpy().astype(np.float16)
            import torch

            with torch.no_grad():
                if self.nsfw is not None:
                    nsfw[rows] = torch.sigmoid(self.nsfw(image_embeds)).numpy()
                if self.aesthetic is not None:
                    aesthetic[rows] = self.aesthetic(image_embeds).numpy()
        out = {**batch, C.SCORE_CLIP_ALIGNMENT: alignment, C.SCORE_NSFW: nsfw, C.SCORE_AESTHETIC: aesthetic}
        if self.config.keep_embeddings:
            out[C.CLIP_EMBEDDING] = embeddings
        return out


def clip_checks(config: ClipScoresConfig) -> tuple[Check, ...]:
    """Checks over the CLIP scores; a model or head that is not configured contributes none."""
    if config.clip is None:
        return ()
    checks = [
        Check(
            name="clip_alignment",
            stage=3,
            column=C.SCORE_CLIP_ALIGNMENT,
            bounds=lambda t: (t.s3.min_clip_alignment, None),
            low_reason="clip_alignment:low",
            high_reason="clip_alignment:high",
            # NaN only on edit triplets (an undecodable image has already failed S1): the check does not apply.
            missing_passes=True,
        )
    ]
    if config.nsfw_head:
        checks.append(
            Check(
                name="nsfw",
                stage=1,
                column=C.SCORE_NSFW,
                bounds=lambda t: (None, t.s1.max_nsfw),
                low_reason="nsfw:low",
                high_reason="nsfw",
            )
        )
    if config.aesthetic_head:
        checks.append(
            Check(
                name="aesthetic",
                stage=5,
                column=C.SCORE_AESTHETIC,
                bounds=lambda t: (t.s5.min_aesthetic, None),
                low_reason="aesthetic:low",
                high_reason="aesthetic:high",
            )
        )
    return tuple(checks)
