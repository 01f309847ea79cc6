"""Column names read and written by the CPU operators (the source columns live in ``pipelines.schema``)."""

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

STAGE = "stage"
DROP_REASON = "drop_reason"
