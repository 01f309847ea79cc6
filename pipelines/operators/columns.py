"""Column names the scoring stages read and write, in one place (the source columns live in ``pipelines.schema``).

This module imports nothing heavy: a stage that reads another stage's column imports its name from here, never from
the module of the stage that writes it (the annotation and CLIP stages load transformers and torch). The stage
contracts (``pipelines.contracts``) are written with these names.
"""

# The operators' input columns, re-exported from the source schema.
from pipelines.schema import CAPTION as CAPTION
from pipelines.schema import IMAGE_BYTES as IMAGE_BYTES
from pipelines.schema import SAMPLE_ID as SAMPLE_ID
from pipelines.schema import SOURCE_IMAGE_BYTES as SOURCE_IMAGE_BYTES

SOURCE_IMAGE_PREFIX = "source_image."


def source_image_column(score_column: str) -> str:
    """The column holding an operator's score of an edit triplet's input image."""
    return SOURCE_IMAGE_PREFIX + score_column


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

STAGE = "stage"
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
TEXT_LANGUAGE = "text_language"
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
CATEGORY = "category"
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
