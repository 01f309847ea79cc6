"""Column names of the producer side, in one place (sources, operators, annotation, the latent store).

Batches between stages are ``dict[str, np.ndarray]`` (Ray Data's numpy batch format); these constants are the keys.
"""

from __future__ import annotations

# Identity (docs/design.md §4 Latent store contract).
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
# Depth estimation and novel-view synthesis are edits too: an input image, an instruction, a target image.
EDIT_TASKS: tuple[str, ...] = ("edit", "depth", "novel_view")
TASKS: tuple[str, ...] = (T2I, *EDIT_TASKS)

# Text.
CAPTION = "caption"  # the caption as delivered (raw), decoded as UTF-8
CAPTION_VALID_UTF8 = "caption_valid_utf8"  # False when the caption bytes were not valid UTF-8 (replaced chars)

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
)
