"""Every column name of the platform, in one place: what sources deliver, what the scoring stages write, what the
latent store keeps (docs/design.md §4), and the store's tensor encoding.

Batches between producer stages are ``dict[str, np.ndarray]`` (Ray Data's numpy batch format) and store rows are
Arrow records; the constants here are their keys. Producers, trainers, evaluation and serving import names from
this module only; none spells a column name as a string (``tests/store/test_columns.py`` checks it). The module
imports nothing heavy, so a stage that reads another stage's column never imports the stage that writes it.

Tensors are stored as raw little-endian float16 bytes in ``binary`` columns with their shapes in integer columns:
copying a binary column into a batch buffer runs at about 5 GB/s here against 2 GB/s for ``fixed_size_list``
(docs/costs.md §2), and the bytes on disk equal the tensor bytes (no compression: zstd saves 7% at 4x the read CPU).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from store.buckets import RESOLUTIONS

# ---- Sources: what every source delivers (pipelines.sources, pipelines.synth) ----

# Identity.
SAMPLE_ID = "sample_id"  # stable hash of the image bytes and the caption bytes
SOURCE = "source"  # the configured name of the source the sample came from
KEY = "key"  # the source's own key (WebDataset __key__, file stem, Parquet key column); may be empty
URL = "url"  # the source's URL column when it has one; may be empty

# Raw inputs, dropped before the store.
IMAGE_BYTES = "image_bytes"
SOURCE_ERROR = "source_error"  # non-empty when the source could not deliver the sample (missing file, no image)
SCORE_SOURCE_ERROR = "score_source_error"  # 1.0 when SOURCE_ERROR is set: the check that drops it reads this

# Editing (TI2I) rows: the task, and the input image the instruction edits (b"" on text-to-image rows).
TASK = "task"
SOURCE_IMAGE_BYTES = "source_image_bytes"
T2I = "t2i"
# Multi-image editing (Edit-Plus): an instruction over several input images ("Picture 1", "Picture 2", ...). The
# first reference stays in SOURCE_IMAGE_BYTES (a single-source triplet is unchanged); references 2..n are in
# ``source_image_bytes_column(n)`` (b"" where a row has fewer), up to MAX_SOURCE_IMAGES per triplet.
EDIT_PLUS = "edit_plus"
MAX_SOURCE_IMAGES = 3
# Inpainting is an edit whose input has a region blanked out and whose target fills it in. Depth estimation and
# novel-view synthesis are edits too: an input image, an instruction, a target image.
INPAINT = "inpaint"
EDIT_TASKS: tuple[str, ...] = ("edit", "depth", "novel_view", EDIT_PLUS, INPAINT)
TASKS: tuple[str, ...] = (T2I, *EDIT_TASKS)
Task = Literal[TASKS]  # a config field naming a task


def source_image_bytes_column(index: int) -> str:
    """Reference ``index`` (1-based) of an edit triplet: 1 is ``source_image_bytes``, n is ``source_image_bytes_n``."""
    _check_reference(index)
    return SOURCE_IMAGE_BYTES if index == 1 else f"{SOURCE_IMAGE_BYTES}_{index}"


def _check_reference(index: int) -> None:
    if not 1 <= index <= MAX_SOURCE_IMAGES:
        raise ValueError(f"reference {index} is not in 1..{MAX_SOURCE_IMAGES}")


# References 2..MAX_SOURCE_IMAGES: every source delivers them (b"" on rows with fewer references).
EXTRA_SOURCE_IMAGE_COLUMNS: tuple[str, ...] = tuple(
    source_image_bytes_column(index) for index in range(2, MAX_SOURCE_IMAGES + 1)
)

# Text.
CAPTION = "caption"  # as delivered (raw) by a source, decoded as UTF-8; in the store, the caption that was encoded
CAPTION_VALID_UTF8 = "caption_valid_utf8"  # False when the caption bytes were not valid UTF-8 (replaced chars)

# Synthetic text-rendering samples (pipelines.synth): paragraphs the layout could not fit before the one drawn.
NUM_DISCARDED = "num_discarded_paragraphs"

SOURCE_COLUMNS: tuple[str, ...] = (
    SAMPLE_ID,
    SOURCE,
    KEY,
    URL,
    IMAGE_BYTES,
    CAPTION,
    CAPTION_VALID_UTF8,
    SOURCE_ERROR,
    SCORE_SOURCE_ERROR,
    TASK,
    SOURCE_IMAGE_BYTES,
    *EXTRA_SOURCE_IMAGE_COLUMNS,
)

# ---- Scoring: what the curation stages write (pipelines.operators, pipelines.annotation) ----

SOURCE_IMAGE_PREFIX = "source_image."


def source_image_column(score_column: str, index: int = 1) -> str:
    """The column holding an operator's score of an edit triplet's input image (reference ``index``, 1-based:
    ``source_image.<score>`` for the first, ``source_image_<n>.<score>`` for reference n of an Edit-Plus triplet;
    NaN where a row has no such reference)."""
    _check_reference(index)
    return SOURCE_IMAGE_PREFIX + score_column if index == 1 else f"{SOURCE_IMAGE_PREFIX[:-1]}_{index}.{score_column}"


# Metadata written next to the scores.
ORIG_WIDTH = "orig_width"
ORIG_HEIGHT = "orig_height"
DECODE_ERROR = "decode_error"  # "" when the image decoded, else a reason such as "broken_file:truncated"

# Score columns, one per operator (float64 unless noted).
SCORE_BROKEN_FILE = "score_broken_file"  # 1.0 when decoding failed
SCORE_FILE_SIZE = "score_file_size"  # bytes
SCORE_RESOLUTION = "score_resolution"  # original short side, pixels
SCORE_PHASH = "score_phash"  # int64: 64-bit DCT perceptual hash
SCORE_DUPLICATE = "score_duplicate"  # 1.0 for a (near-)duplicate of a sample kept elsewhere; global pass
SCORE_ORIENTATION = "score_orientation"  # EXIF orientation tag found, 1..8
SCORE_BLUR = "score_blur"  # variance of the Laplacian of the analysis copy
SCORE_LUMA = "score_luma"  # mean luma in [0, 1]
SCORE_SATURATION = "score_saturation"  # mean HSV saturation in [0, 1]
SCORE_ENTROPY = "score_entropy"  # grey histogram entropy, bits (0..8)
SCORE_TEXTURE = "score_texture"  # fraction of high-frequency pixels in [0, 1]
SCORE_EXPOSURE = "score_exposure"  # fraction of clipped pixels in [0, 1]
SCORE_BLOCKINESS = "score_blockiness"  # JPEG 8x8 block-boundary discontinuity ratio (1.0 = none)
SCORE_QR_CODE = "score_qr_code"  # 1.0 when a QR code is detected
SCORE_BARCODE = "score_barcode"  # 1.0 when a 1-D barcode is detected

# Every operator's score, in the order build_operators (pipelines.operators.registry) runs them.
OPERATOR_SCORES: tuple[str, ...] = (
    SCORE_BROKEN_FILE,
    SCORE_FILE_SIZE,
    SCORE_RESOLUTION,
    SCORE_PHASH,
    SCORE_ORIENTATION,
    SCORE_BLUR,
    SCORE_LUMA,
    SCORE_SATURATION,
    SCORE_ENTROPY,
    SCORE_TEXTURE,
    SCORE_EXPOSURE,
    SCORE_BLOCKINESS,
    SCORE_QR_CODE,
    SCORE_BARCODE,
)

STAGE = "stage"  # int8: the highest curation stage the sample passed (0..7)
DROP_REASON = "drop_reason"

# CLIP family (pipelines.operators.clip_scores).
SCORE_CLIP_ALIGNMENT = "score_clip_alignment"
SCORE_NSFW = "score_nsfw"
SCORE_AESTHETIC = "score_aesthetic"
CLIP_EMBEDDING = "clip_embedding"  # kept for retrieval (S6) and balance (S7); float16 [D]
CLIP_SCORES: tuple[str, ...] = (SCORE_CLIP_ALIGNMENT, SCORE_NSFW, SCORE_AESTHETIC)

# Structured annotation (pipelines.annotation).
ANN_CAPTION = "ann_caption"
ANN_IMAGE_TYPE = "ann_image_type"
ANN_IMAGE_STYLE = "ann_image_style"
ANN_WATERMARKS = "ann_watermark_list"
ANN_ABNORMAL = "ann_abnormal_element"
ANN_ERROR = "annotation_error"
ANN_RAW = "annotation_raw"
ANNOTATION_COLUMNS = (ANN_CAPTION, ANN_IMAGE_TYPE, ANN_IMAGE_STYLE, ANN_WATERMARKS, ANN_ABNORMAL, ANN_ERROR, ANN_RAW)

# OCR (pipelines.operators.text_ocr).
OCR_TEXT = "ocr_text"
TEXT_LANGUAGE = "text_language"  # en / zh / other / none, also stored
SCORE_TEXT_LINES = "score_text_lines"
SCORE_TEXT_CHARS = "score_text_chars"
SCORE_TEXT_AREA = "score_text_area"
SCORE_TEXT_MIN_HEIGHT = "score_text_min_height"
SCORE_WATERMARK = "score_watermark"
WATERMARK_VERIFIED = "watermark_verified"
OCR_ERROR = "ocr_error"
SCORE_OCR_ERROR = "score_ocr_error"
OCR_COLUMNS: tuple[str, ...] = (
    OCR_TEXT,
    TEXT_LANGUAGE,
    SCORE_TEXT_LINES,
    SCORE_TEXT_CHARS,
    SCORE_TEXT_AREA,
    SCORE_TEXT_MIN_HEIGHT,
    SCORE_WATERMARK,
    WATERMARK_VERIFIED,
    OCR_ERROR,
    SCORE_OCR_ERROR,
)

# Faces and category (pipelines.operators.faces).
SCORE_NUM_FACES = "score_num_faces"
SCORE_FACE_AREA = "score_face_area"
SCORE_FACE_MOSAIC = "score_face_mosaic"
SCORE_FACE_BLUR_RATIO = "score_face_blur_ratio"
SCORE_FACE_DEGRADED = "score_face_degraded"
CATEGORY = "category"  # general / portrait / text / ..., also stored
FACE_COLUMNS: tuple[str, ...] = (
    SCORE_NUM_FACES,
    SCORE_FACE_AREA,
    SCORE_FACE_MOSAIC,
    SCORE_FACE_BLUR_RATIO,
    SCORE_FACE_DEGRADED,
    CATEGORY,
)

# Balance (pipelines.operators.balance).
RESOLUTION_CLASS = "resolution_class"
QUALITY_SCORE = "quality_score"
QUALITY_RANK = "quality_rank"
ELIGIBLE = "eligible"  # bool column: passes stages 1-6; written by the caller before ranking

# Captions (pipelines.operators.caption).
SCORE_CAPTION_TOKENS = "score_caption_tokens"
SCORE_CAPTION_INVALID = "score_caption_invalid"
CAPTION_INVALID_REASON = "caption_invalid_reason"
CAPTION_RAW = "caption_raw"
CAPTION_RECAPTION = "caption_recaption"
CAPTION_FUSED = "caption_fused"
CAPTION_COLUMNS: tuple[str, ...] = (
    SCORE_CAPTION_TOKENS,
    SCORE_CAPTION_INVALID,
    CAPTION_INVALID_REASON,
    CAPTION_RAW,
    CAPTION_RECAPTION,
    CAPTION_FUSED,
)

# ---- Encoding (pipelines.encode): written by the encode stages, read by the store writer ----

ENCODE_ERROR = "encode_error"  # "" when the sample encoded, else why it could not be (dropped with that reason)
# An edit triplet's input image as the vision tower sees it (``edit_vision_area`` pixels), uint8 bytes and shape.
VISION_PIXELS = "vision_pixels"
VISION_HEIGHT = "vision_height"
VISION_WIDTH = "vision_width"


def vision_column(column: str, index: int) -> str:
    """``VISION_PIXELS`` / ``VISION_HEIGHT`` / ``VISION_WIDTH`` of reference ``index`` of a multi-image edit (the
    column itself for the first, ``<column>_<n>`` for reference n; b"" / -1 where a row has no such reference)."""
    _check_reference(index)
    return column if index == 1 else f"{column}_{index}"


# ---- The latent store: one row per sample, one column per resolution ----

# Identity and text, beside SAMPLE_ID, SOURCE, CAPTION, TEXT_LANGUAGE, CATEGORY, STAGE and TASK above.
BUCKET = "bucket"
CAPTION_KIND = "caption_kind"  # raw / recaption / fused
RENDERED_TEXT = "rendered_text"  # synthetic text-rendering samples: the text drawn; "" otherwise

# Condition encoder hidden states after the drop: [text_len, text_dim] float16.
TEXT_EMBEDS = "text_embeds"
TEXT_LEN = "text_len"
TEXT_DIM = "text_dim"

LATENT_CHANNELS = 16
TENSOR_DTYPE = np.float16

# Preference pairs (training.post_training.pairs): a store of pairs holds the winner in ``latents_<res>`` and:
PREFERENCE_SOURCE = "preference_source"  # reward:<terms> or human:<labels file>
REWARD_WINNER = "reward_winner"  # reward pairs only; NaN for labelled pairs
REWARD_LOSER = "reward_loser"


def loser_latents_column(resolution: int) -> str:
    """``loser_latents_<res>``: a preference pair's rejected image, encoded like ``latents_<res>``."""
    return f"loser_{latents_column(resolution)}"


# ---- Evaluation results (training.evaluation): one Parquet row per evaluated image ----

# VAE rows: which image set and which image of it, the reconstruction's quality and OCR agreement.
EVAL_SET = "set"
EVAL_INDEX = "index"  # position within its set or task, for the grids
EVAL_TEXT = "text"  # the text drawn in a text-rich image ("" for ordinary images)
EVAL_IMAGE = "image"  # uint8 [H, W, 3] in the pipeline; stored as EVAL_IMAGE_PNG
EVAL_RECONSTRUCTION = "reconstruction"
EVAL_PSNR = "psnr"
EVAL_SSIM = "ssim"
EVAL_READ_ORIGINAL = "read_original"
EVAL_READ_RECONSTRUCTION = "read_reconstruction"
EVAL_OCR_EDIT = "ocr_edit"  # edit distance of the two readings over the original's length
# Generation rows: the task (chars / text_en / text_zh / clip / scenes), its group, the prompt, what it should show.
EVAL_MODEL = "model"  # the evaluated model's name (ModelSpec.name), on generation rows
EVAL_TASK = "task"
EVAL_GROUP = "group"
EVAL_PROMPT = "prompt"
EVAL_EXPECTED = "expected"
EVAL_SIZE = "size"
EVAL_SEED = "seed"
EVAL_READ = "read"  # what OCR or the judge read in the image
EVAL_SCORE = "score"
EVAL_CLIP_SCORE = "clip_score"
EVAL_IMAGE_PNG = "image_png"
EVAL_RECONSTRUCTION_PNG = "reconstruction_png"


def judge_column(attribute: str) -> str:
    """``judge_<attribute>``: the scene judge's verdict on one attribute (1.0 right, 0.0 wrong, NaN not judged)."""
    return f"judge_{attribute}"


# Keys of a decoded training batch (store.batches.decode_batch), beside TEXT_EMBEDS and SAMPLE_ID: latents of one
# resolution [B, 16, h, w], the text mask [B, L], an edit batch's input-image latents [B, 16, h, w] and, in an
# Edit-Plus batch, its references 2..n [B, n - 1, 16, h, w] (every row of a batch has as many references).
LATENTS = "latents"
TEXT_MASK = "text_mask"
SOURCE_LATENTS = "source_latents"
EXTRA_SOURCE_LATENTS = "extra_source_latents"


def latents_column(resolution: int) -> str:
    """``latents_<res>``: normalised VAE latents [16, H/8, W/8] float16; null where the source is too small."""
    return f"latents_{resolution}"


def source_latents_column(resolution: int) -> str:
    """``source_latents_<res>``: an edit triplet's input image, normalised latents of the same shape as
    ``latents_<res>`` (cropped to the same bucket size); null on text-to-image rows."""
    return f"source_latents_{resolution}"


def extra_source_latents_column(resolution: int) -> str:
    """``extra_source_latents_<res>``: an Edit-Plus triplet's references 2..n, list<binary> of latents shaped like
    ``source_latents_<res>`` (each cropped to the target's bucket size); null on rows with one reference or none.
    Stores written before Edit-Plus have no such column: readers treat it as absent."""
    return f"extra_{source_latents_column(resolution)}"


def height_column(resolution: int) -> str:
    return f"height_{resolution}"


def width_column(resolution: int) -> str:
    return f"width_{resolution}"


def tensor_bytes(array: np.ndarray) -> bytes:
    """A tensor as the store keeps it: contiguous little-endian float16."""
    return np.ascontiguousarray(array, dtype="<f2").tobytes()


def bytes_tensor(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``tensor_bytes`` (read-only view when the buffer allows)."""
    array = np.frombuffer(data, dtype="<f2")
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{array.size} values cannot take shape {shape}")
    return array.reshape(shape)


def base_fields() -> list[pa.Field]:
    return [
        pa.field(SAMPLE_ID, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string()),
        pa.field(BUCKET, pa.string(), nullable=False),
        pa.field(CAPTION, pa.string()),
        pa.field(CAPTION_KIND, pa.string()),
        pa.field(RENDERED_TEXT, pa.string()),
        pa.field(TEXT_LANGUAGE, pa.string()),
        pa.field(CATEGORY, pa.string()),
        pa.field(STAGE, pa.int8()),
        pa.field(TASK, pa.string()),
        pa.field(TEXT_EMBEDS, pa.binary()),
        pa.field(TEXT_LEN, pa.int32()),
        pa.field(TEXT_DIM, pa.int32()),
    ]


def resolution_fields(resolutions: tuple[int, ...] = RESOLUTIONS) -> list[pa.Field]:
    fields = []
    for resolution in resolutions:
        fields += [
            pa.field(latents_column(resolution), pa.binary()),
            pa.field(source_latents_column(resolution), pa.binary()),
            pa.field(extra_source_latents_column(resolution), pa.list_(pa.binary())),
            pa.field(height_column(resolution), pa.int32()),
            pa.field(width_column(resolution), pa.int32()),
        ]
    return fields


def is_score_column(name: str) -> bool:
    """Stored scores keep their curation names (``score_*``): thresholds can be re-applied at read time."""
    return name.startswith("score_")
