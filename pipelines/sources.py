"""Sources: image-text pairs as a Ray Dataset, from Parquet, WebDataset tar shards, or a folder.

Every source yields the columns of ``store.columns.SOURCE_COLUMNS``: ``sample_id`` (a stable hash of the image
bytes and the caption bytes), ``source``, ``key``, ``url``, ``image_bytes``, ``caption``, ``caption_valid_utf8`` and
``source_error``. Nothing is decoded here and nothing is dropped: a sample the source cannot deliver (a missing file,
a row without an image) comes out with an empty ``image_bytes`` and a ``source_error`` reason, so the funnel counts it.

- ``parquet``: the img2dataset / LAION layout (an image-bytes column such as ``jpg`` or ``image``, also the
  Hugging Face ``{bytes, path}`` struct; a caption column such as ``caption`` or ``txt``; optional ``url``, ``key``).
- ``webdataset``: img2dataset's tar shards (``NNNN.jpg`` + ``NNNN.txt`` and/or ``NNNN.json`` with a caption).
- ``folder``: images with sidecar ``.txt`` captions, or a JSONL manifest of ``{"image": path, "caption": text}``.

Editing (TI2I) sources, ``task: edit`` (or ``depth`` / ``novel_view``, which are edits too): triplets of a source
image, an instruction and a target image. The target goes in ``image_bytes`` (what the model learns to produce), the
instruction in ``caption``, the input image in ``source_image_bytes``; ``sample_id`` hashes all three. Layouts:

- ``parquet``: a source-image column (``source_image``, ``input_image``, ``src_jpg``... or ``source_image_column``),
  the target in the image column (``target_image``, ``edited_image``, ``jpg``...), the instruction in the caption
  column (``instruction``, ``edit_prompt``, ``caption``...).
- ``webdataset``: ``NNNN.src.jpg`` (or ``.src.png``...) beside ``NNNN.jpg`` and ``NNNN.txt`` / ``NNNN.json``.
- ``folder``: a JSONL manifest of ``{"source_image": path, "image": path, "instruction": text}``.

Multi-image edits (Edit-Plus): an instruction over several input images. The first reference goes in
``source_image_bytes`` as for a single-source triplet, references 2..n in ``source_image_bytes_<n>`` (at most
``store.columns.MAX_SOURCE_IMAGES``), and an ``edit`` row with several references gets the task ``edit_plus``. Layouts:
a ``source_images`` list column (Parquet), ``NNNN.src0.jpg``, ``NNNN.src1.jpg``... members (WebDataset; ``src.jpg``
still names a single source), a ``source_images`` list of paths (JSONL manifest; ``source_image`` may be a list).

A triplet whose source image is missing comes out with a ``source_error`` (``no_source_image:...``; for reference n
of several, ``no_source_image_<n>:...``) and is dropped at S1 with that reason, like a sample without an image.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pathlib
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
import ray.data

from models.config import StrictModel
from models.ray_runtime import local_read_blocks
from store import columns as C
from store.parquet import read_parquet

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("jpg", "image", "jpeg", "png", "webp", "image_bytes", "img")
CAPTION_COLUMN_CANDIDATES: tuple[str, ...] = ("caption", "txt", "text", "TEXT", "prompt")
JSON_CAPTION_KEYS: tuple[str, ...] = ("caption", "txt", "text", "TEXT", "prompt", "instruction")
# Editing triplets: where the target, the input image and the instruction usually live.
EDIT_TARGET_COLUMN_CANDIDATES: tuple[str, ...] = ("target_image", "edited_image", "output_image", "target")
EDIT_SOURCE_COLUMN_CANDIDATES: tuple[str, ...] = (
    "source_images",
    "input_images",
    "reference_images",
    "source_image",
    "input_image",
    "src_jpg",
    "src_png",
    "original_image",
)
EDIT_CAPTION_COLUMN_CANDIDATES: tuple[str, ...] = ("instruction", "edit_prompt", "edit_instruction")
# WebDataset members holding the input image of a triplet: NNNN.src.jpg etc.
WDS_SOURCE_PREFIX = "src."
# Members holding reference n+1 of a multi-image edit: NNNN.src0.jpg, NNNN.src1.jpg, ...
WDS_REFERENCE_PREFIX = "src"
# JSONL manifests: the list of input images of a multi-image edit (a single ``source_image`` may also be a list).
MANIFEST_SOURCES_KEYS: tuple[str, ...] = ("source_images", "source_image")


class SourceConfig(StrictModel):
    """One input of the producer. Column names are detected when not given (Parquet)."""

    name: str = "raw"
    kind: Literal["parquet", "webdataset", "folder"]
    paths: list[str]
    image_column: str | None = None
    caption_column: str | None = None
    url_column: str | None = None
    key_column: str | None = None
    manifest: str | None = None  # folder: a JSONL manifest instead of sidecar .txt files
    # "t2i": image-caption pairs. The edit tasks (store.columns.EDIT_TASKS): (source image, instruction, target)
    # triplets; "edit" rows with several input images become "edit_plus".
    task: C.Task = C.T2I
    source_image_column: str | None = None  # parquet triplets: the input image (detected when not given)
    # Put before every caption of this source, e.g. a LoRA's trigger word ("sks dog, "); sample ids keep hashing
    # the file's own caption, so a changed prefix does not make new samples of the same files.
    caption_prefix: str = ""

    @property
    def is_edit(self) -> bool:
        return self.task != C.T2I


def sample_id(
    image_bytes: bytes, caption_bytes: bytes, source_image_bytes: bytes = b"", extra_source_images: tuple = ()
) -> str:
    """Stable 128-bit hex id of a pair (or of an edit triplet, with its input images): the same bytes give the same
    id on every machine and every run. A pair's id does not depend on the triplet extension, nor a single-source
    triplet's on the multi-image one."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(len(image_bytes).to_bytes(8, "little"))
    digest.update(image_bytes)
    digest.update(caption_bytes)
    if source_image_bytes:
        digest.update(b"\x00source-image\x00")
        digest.update(source_image_bytes)
    for index, extra in enumerate(extra_source_images, start=2):
        digest.update(f"\x00source-image-{index}\x00".encode())
        digest.update(len(extra).to_bytes(8, "little"))
        digest.update(extra)
    return digest.hexdigest()


def collect_references(values: list[object | None], reason: str) -> tuple[bytes, list[bytes], str]:
    """The first reference, the others and a ``source_error`` from a triplet's input images in order (None where one
    is missing; ``reason`` says how, e.g. ``null``). The error names the reference: ``no_source_image:<reason>`` for
    the first (or all), ``no_source_image_<n>:<reason>`` for reference n, ``too_many_source_images:<count>``."""
    images = [_image_bytes(value) for value in values]
    if not values:
        return b"", [], f"no_source_image:{reason}"
    if len(values) > C.MAX_SOURCE_IMAGES:
        return images[0], [], f"too_many_source_images:{len(values)}"
    error = ""
    for index, value in enumerate(values, start=1):
        if _is_null_image(value):
            error = f"no_source_image:{reason}" if index == 1 else f"no_source_image_{index}:{reason}"
            break
        if index > 1 and not images[index - 1]:  # an empty extra reference would read as no reference at all
            error = f"no_source_image_{index}:empty"
            break
    return images[0], images[1:], error


def _as_list(value: object) -> list[object] | None:
    """A cell holding a list of images (a list column, read as a list or an array) as a list; None otherwise."""
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        return list(value)
    return None


def decode_caption(raw: bytes | str | None) -> tuple[bytes, str, bool]:
    """Caption bytes, text and whether the bytes were valid UTF-8 (invalid bytes are replaced, not lost)."""
    if raw is None:
        return b"", "", True
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass"), raw, True
    raw = bytes(raw)
    try:
        return raw, raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw, raw.decode("utf-8", "replace"), False


def _is_null_image(value: object) -> bool:
    """A missing image (null cell, or a struct without bytes); empty bytes are a broken file, not a missing one."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return value is None or (isinstance(value, float) and value != value)


def _image_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, dict):  # the Hugging Face datasets Image struct
        value = value.get("bytes") or b""
    return bytes(value)


def make_batch(
    source: str,
    images: list[bytes],
    captions: list[bytes | str | None],
    keys: list[str],
    urls: list[str],
    errors: list[str],
    *,
    task: str | list[str] = C.T2I,
    source_images: list[bytes] | None = None,
    extra_source_images: list[list[bytes]] | None = None,
) -> dict[str, np.ndarray]:
    """The source columns for one batch, with ids computed from the raw bytes. Edit triplets pass their ``task``
    (one for the batch, or one per row) and one input image per row in ``source_images``; multi-image edits their
    references 2..n per row in ``extra_source_images`` (an ``edit`` row with any becomes ``edit_plus``)."""
    count = len(images)
    tasks = [task] * count if isinstance(task, str) else list(task)
    extras = [list(row) for row in extra_source_images] if extra_source_images is not None else [[]] * count
    if len(extras) != count or any(len(row) > C.MAX_SOURCE_IMAGES - 1 for row in extras):
        raise ValueError(f"extra source images must be at most {C.MAX_SOURCE_IMAGES - 1} per row, for {count} rows")
    tasks = [
        C.EDIT_PLUS if extra and row_task == "edit" else row_task for row_task, extra in zip(tasks, extras, strict=True)
    ]
    unknown = sorted(set(tasks) - set(C.TASKS))
    if unknown or len(tasks) != count:
        raise ValueError(f"tasks must be one of {list(C.TASKS)} per row, got {unknown or len(tasks)}")
    if source_images is None:
        source_images = [b""] * count
    elif len(source_images) != count:
        raise ValueError(f"{len(source_images)} source images for {count} rows")
    ids, texts, valid = [], [], []
    for image, caption, source_image, extra in zip(images, captions, source_images, extras, strict=True):
        caption_bytes, text, is_valid = decode_caption(caption)
        ids.append(sample_id(image, caption_bytes, source_image, tuple(extra)))
        texts.append(text)
        valid.append(is_valid)
    return {
        C.SAMPLE_ID: np.array(ids, dtype=object),
        C.SOURCE: np.array([source] * count, dtype=object),
        C.KEY: np.array(keys, dtype=object),
        C.URL: np.array(urls, dtype=object),
        C.IMAGE_BYTES: _object_array(images),
        C.CAPTION: np.array(texts, dtype=object),
        C.CAPTION_VALID_UTF8: np.array(valid, dtype=bool),
        C.SOURCE_ERROR: np.array(errors, dtype=object),
        C.SCORE_SOURCE_ERROR: np.array([1.0 if error else 0.0 for error in errors]),
        C.TASK: np.array(tasks, dtype=object),
        C.SOURCE_IMAGE_BYTES: _object_array(list(source_images)),
        **{
            column: _object_array([row[index] if index < len(row) else b"" for row in extras])
            for index, column in enumerate(C.EXTRA_SOURCE_IMAGE_COLUMNS)
        },
    }


def _object_array(values: list) -> np.ndarray:
    """A 1-D object array (``np.array`` would turn equal-length bytes into a fixed-width ``S`` array)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def expand_paths(patterns: list[str], extensions: tuple[str, ...]) -> list[str]:
    """Files named by ``patterns`` (files, folders searched recursively, or globs), sorted; error if none."""
    files: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            for ext in extensions:
                files.extend(glob.glob(os.path.join(pattern, "**", f"*.{ext}"), recursive=True))
                files.extend(glob.glob(os.path.join(pattern, "**", f"*.{ext.upper()}"), recursive=True))
        elif any(char in pattern for char in "*?["):
            files.extend(glob.glob(pattern, recursive=True))
        elif os.path.isfile(pattern):
            files.append(pattern)
        else:
            raise ValueError(f"source path {pattern!r} does not exist")
    files = sorted(set(files))
    if not files:
        raise ValueError(f"no {'/'.join(extensions)} files under {patterns}")
    return files


def _pick(columns: list[str], configured: str | None, candidates: tuple[str, ...], what: str, path: str) -> str | None:
    if configured is not None:
        if configured not in columns:
            raise ValueError(f"{what} column {configured!r} is not in {path} (columns: {columns})")
        return configured
    return next((name for name in candidates if name in columns), None)


def read_parquet_source(config: SourceConfig) -> ray.data.Dataset:
    files = expand_paths(config.paths, ("parquet",))
    columns = pq.read_schema(files[0]).names
    image_candidates, caption_candidates = IMAGE_COLUMN_CANDIDATES, CAPTION_COLUMN_CANDIDATES
    if config.is_edit:
        image_candidates = EDIT_TARGET_COLUMN_CANDIDATES + IMAGE_COLUMN_CANDIDATES
        caption_candidates = EDIT_CAPTION_COLUMN_CANDIDATES + CAPTION_COLUMN_CANDIDATES
    image_col = _pick(columns, config.image_column, image_candidates, "image", files[0])
    caption_col = _pick(columns, config.caption_column, caption_candidates, "caption", files[0])
    if image_col is None or caption_col is None:
        raise ValueError(
            f"cannot tell the image and caption columns of {files[0]} (columns: {columns}); "
            "set image_column and caption_column in the source config"
        )
    source_col = None
    if config.is_edit:
        source_col = _pick(columns, config.source_image_column, EDIT_SOURCE_COLUMN_CANDIDATES, "source image", files[0])
        if source_col is None:
            raise ValueError(
                f"task {config.task!r} reads (source image, instruction, target) triplets, but {files[0]} has no "
                f"source-image column (columns: {columns}); set source_image_column in the source config"
            )
    url_col = _pick(columns, config.url_column, ("url",), "url", files[0])
    key_col = _pick(columns, config.key_column, ("key",), "key", files[0])
    wanted = [c for c in (image_col, caption_col, url_col, key_col, source_col) if c is not None]

    def normalise(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch[image_col])
        raw = list(batch[image_col])
        images = [_image_bytes(value) for value in raw]
        errors = ["no_image:null" if _is_null_image(value) else "" for value in raw]
        sources = extras = None
        if source_col is not None:
            sources, extras = [], []
            for row, value in enumerate(batch[source_col]):
                listed = _as_list(value)
                first, others, error = collect_references([value] if listed is None else listed, "null")
                sources.append(first)
                extras.append(others)
                errors[row] = errors[row] or error
        return make_batch(
            config.name,
            images,
            list(batch[caption_col]),
            [str(k) if k is not None else "" for k in batch[key_col]] if key_col else [""] * count,
            [str(u) if u is not None else "" for u in batch[url_col]] if url_col else [""] * count,
            errors,
            task=config.task,
            source_images=sources,
            extra_source_images=extras,
        )

    return (
        read_parquet(files, override_num_blocks=local_read_blocks())
        .select_columns(wanted)
        .map_batches(normalise, batch_format="numpy")
    )


def _caption_from_json(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        record = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(record, dict):
        for key in JSON_CAPTION_KEYS:
            if isinstance(record.get(key), str):
                return record[key]
    return None


def _cell(batch: dict[str, np.ndarray], column: str, row: int) -> object | None:
    """A cell, or None where the column is absent or the shard lacked that member (null / NaN after batching)."""
    if column not in batch:
        return None
    value = batch[column][row]
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value


def read_webdataset_source(config: SourceConfig) -> ray.data.Dataset:
    files = expand_paths(config.paths, ("tar",))

    def normalise(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch["__key__"])
        images, captions, errors, sources, extras = [], [], [], [], []
        for row in range(count):
            image = next((value for ext in IMAGE_EXTENSIONS if (value := _cell(batch, ext, row)) is not None), None)
            caption = _cell(batch, "txt", row)
            if caption is None:
                caption = _caption_from_json(_cell(batch, "json", row))
            images.append(_image_bytes(image))
            captions.append(caption)
            error = "" if image is not None else "no_image:missing_in_shard"
            if config.is_edit:
                first, others, source_error = collect_references(_wds_references(batch, row), "missing_in_shard")
                sources.append(first)
                extras.append(others)
                error = error or source_error
            errors.append(error)
        urls = [str(u) for u in batch["__url__"]] if "__url__" in batch else [""] * count
        return make_batch(
            config.name,
            images,
            captions,
            [str(k) for k in batch["__key__"]],
            urls,
            errors,
            task=config.task,
            source_images=sources if config.is_edit else None,
            extra_source_images=extras if config.is_edit else None,
        )

    return ray.data.read_webdataset(files, decoder=None, override_num_blocks=local_read_blocks()).map_batches(
        normalise, batch_format="numpy"
    )


def _wds_member(batch: dict[str, np.ndarray], row: int, prefix: str) -> object | None:
    return next((v for ext in IMAGE_EXTENSIONS if (v := _cell(batch, prefix + ext, row)) is not None), None)


def _wds_references(batch: dict[str, np.ndarray], row: int) -> list[object | None]:
    """A WebDataset triplet's input images in order: ``src0.*``, ``src1.*``... up to the last one present (None for
    a gap before it), else the single ``src.*``; one more than the maximum is kept, to be reported."""
    numbered = [_wds_member(batch, row, f"{WDS_REFERENCE_PREFIX}{index}.") for index in range(C.MAX_SOURCE_IMAGES + 1)]
    last = max((index for index, value in enumerate(numbered) if value is not None), default=-1)
    if last < 0:
        return [_wds_member(batch, row, WDS_SOURCE_PREFIX)]
    return numbered[: last + 1]


def _read_file(path: str) -> tuple[bytes, str]:
    try:
        with open(path, "rb") as handle:
            return handle.read(), ""
    except OSError as error:
        return b"", f"unreadable_file:{type(error).__name__}"


def _manifest_references(batch: dict[str, np.ndarray], row: int, root: str) -> tuple[bytes, list[bytes], str]:
    """A manifest triplet's input images: ``source_images`` (a list of paths) or ``source_image`` (a path or a list),
    each read from the manifest's folder; the error names the first reference that could not be read."""
    value = next((v for key in MANIFEST_SOURCES_KEYS if (v := _cell(batch, key, row)) is not None), None)
    paths = _as_list(value)
    paths = paths if paths is not None else ([] if value is None or value == "" else [value])
    if not paths:
        return b"", [], "no_source_image:missing"
    if len(paths) > C.MAX_SOURCE_IMAGES:
        return b"", [], f"too_many_source_images:{len(paths)}"
    images, error = [], ""
    for index, path in enumerate(paths, start=1):
        data, read_error = _read_file(os.path.join(root, str(path))) if path else (b"", "missing")
        images.append(data)
        read_error = read_error or ("empty" if index > 1 and not data else "")
        if read_error and not error:
            error = f"no_source_image:{read_error}" if index == 1 else f"no_source_image_{index}:{read_error}"
    return images[0], images[1:], error


def read_folder_source(config: SourceConfig) -> ray.data.Dataset:
    if config.manifest is not None:
        manifest = pathlib.Path(config.manifest)
        if not manifest.is_file():
            raise ValueError(f"manifest {manifest} does not exist")
        root = str(manifest.parent)

        def from_manifest(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            images, errors, keys, sources, extras = [], [], [], [], []
            for row, relative in enumerate(batch["image"]):
                data, error = _read_file(os.path.join(root, str(relative)))
                if config.is_edit:
                    first, others, source_error = _manifest_references(batch, row, root)
                    sources.append(first)
                    extras.append(others)
                    error = error or source_error
                images.append(data)
                errors.append(error)
                keys.append(pathlib.Path(str(relative)).stem)
            text_column = next((name for name in ("instruction", "caption") if name in batch), None)
            texts = batch[text_column] if text_column else [None] * len(images)
            captions = [c if isinstance(c, str) else None for c in texts]
            return make_batch(
                config.name,
                images,
                captions,
                keys,
                [""] * len(images),
                errors,
                task=config.task,
                source_images=sources if config.is_edit else None,
                extra_source_images=extras if config.is_edit else None,
            )

        return ray.data.read_json(str(manifest), lines=True, override_num_blocks=local_read_blocks()).map_batches(
            from_manifest, batch_format="numpy"
        )

    if config.is_edit:
        raise ValueError(
            f"folder source {config.name!r}: edit triplets need a JSONL manifest of "
            '{"source_image": path, "image": path, "instruction": text} (set manifest)'
        )
    files = expand_paths(config.paths, IMAGE_EXTENSIONS)

    def with_sidecar(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        captions, keys = [], []
        for path in batch["path"]:
            sidecar = os.path.splitext(str(path))[0] + ".txt"
            caption, _ = _read_file(sidecar) if os.path.exists(sidecar) else (None, "")
            captions.append(caption)
            keys.append(pathlib.Path(str(path)).stem)
        images = [bytes(b) for b in batch["bytes"]]
        return make_batch(config.name, images, captions, keys, [""] * len(images), [""] * len(images))

    return ray.data.read_binary_files(files, include_paths=True, override_num_blocks=local_read_blocks()).map_batches(
        with_sidecar, batch_format="numpy"
    )


def read_source(config: SourceConfig) -> ray.data.Dataset:
    """The source as a Ray Dataset of ``SOURCE_COLUMNS`` (captions behind ``caption_prefix`` when it is set)."""
    readers = {"parquet": read_parquet_source, "webdataset": read_webdataset_source, "folder": read_folder_source}
    dataset = readers[config.kind](config)
    if not config.caption_prefix:
        return dataset
    prefix = config.caption_prefix

    def prefixed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        captions = np.empty(len(batch[C.CAPTION]), dtype=object)
        captions[:] = [(prefix + (caption or "")).strip() for caption in batch[C.CAPTION]]
        return {**batch, C.CAPTION: captions}

    return dataset.map_batches(prefixed, batch_format="numpy")
