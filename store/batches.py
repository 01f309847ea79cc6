"""Decoded training batches from stored rows: tensors copied once from the Arrow buffers, rows regrouped by shape.

``decode_batch`` turns rows of one bucket into ``latents``, ``text_embeds`` and ``text_mask`` tensors (and the edit
rows' ``source_latents``, Edit-Plus rows' ``extra_source_latents``); ``iter_bucketed_batches`` regroups a stream of
mixed-bucket rows into batches of one shape and one kind (text to image, or edits with a given number of inputs).
torch is imported by ``decode_batch`` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store import columns as C

if TYPE_CHECKING:
    import torch


def _binary_chunks(column: pa.Array | pa.ChunkedArray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(offsets, data bytes) of each chunk of a binary column, as views of the Arrow buffers (no copy)."""
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if len(chunk) == 0:
            continue
        _, offsets, data = chunk.buffers()
        yield (
            np.frombuffer(offsets, dtype=np.int32, count=len(chunk) + 1, offset=chunk.offset * 4),
            np.frombuffer(data, dtype=np.uint8),
        )


def _pool_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array in Arrow's memory pool. The pool keeps freed pages mapped, so a reader that allocates
    a batch per step reuses memory; numpy's large allocations are mapped afresh and returned to the OS on free, and
    faulting 45 MB of new pages in costs about as much as reading them from the page cache."""
    count = int(np.prod(shape))
    buffer = pa.allocate_buffer(count * np.dtype(dtype).itemsize)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def as_table(batch: pa.Table | pa.RecordBatch | dict[str, np.ndarray]) -> pa.Table:
    """A batch in any of Ray Data's formats (numpy dict, Arrow record batch or table) as one Arrow table."""
    if isinstance(batch, dict):
        return pa.table(
            {key: list(value) if np.asarray(value).dtype == object else value for key, value in batch.items()}
        )
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    return batch


def fixed_size_rows(column: pa.Array | pa.ChunkedArray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A binary column whose every value is one float16 array of ``shape``, as ``[rows, *shape]`` float16, copied
    once from the Arrow buffers; a value of another size is an error naming ``what``."""
    size = int(np.prod(shape)) * 2
    out = _pool_array((len(column), *shape), np.float16)
    row = 0
    for offsets, data in _binary_chunks(column):
        count = len(offsets) - 1
        if not np.all(np.diff(offsets) == size):
            raise ValueError(f"{what} are not all {shape}: decode a single-shape batch (iter_bucketed_batches)")
        out[row : row + count] = data[offsets[0] : offsets[-1]].view("<f2").reshape(count, *shape)
        row += count
    return out


def decode_batch(batch: pa.Table | dict[str, np.ndarray], resolution: int) -> dict[str, torch.Tensor]:
    """Rows of one bucket -> ``latents [B, 16, h, w]`` float16, ``text_embeds [B, L, D]`` float16 zero-padded and
    ``text_mask [B, L]`` int64 (the layout of ``models.condition_encoder.PromptEmbeds``). Each tensor is copied
    once, straight from the Arrow buffers into the batch."""
    import torch

    batch = as_table(batch)
    heights = batch.column(C.height_column(resolution)).to_numpy()
    widths = batch.column(C.width_column(resolution)).to_numpy()
    if len(set(heights.tolist())) != 1 or len(set(widths.tolist())) != 1:
        raise ValueError("decode_batch takes rows of one shape; use iter_bucketed_batches")
    shape = (C.LATENT_CHANNELS, int(heights[0]) // 8, int(widths[0]) // 8)
    latents = fixed_size_rows(batch.column(C.latents_column(resolution)), shape, "latents")

    source_latents = None
    source = C.source_latents_column(resolution)
    if source in batch.column_names and batch.column(source).null_count < batch.num_rows:
        if batch.column(source).null_count:
            raise ValueError("decode_batch takes edit rows or text-to-image rows, not both; use iter_bucketed_batches")
        source_latents = fixed_size_rows(batch.column(source), shape, "source latents (the target's shape)")
    extra_latents = _extra_references(batch, resolution, shape) if source_latents is not None else None

    lengths = batch.column(C.TEXT_LEN).to_numpy().astype(np.int64)
    dim = int(batch.column(C.TEXT_DIM)[0].as_py())
    embeds = _pool_array((len(lengths), int(lengths.max()), dim), np.float16)
    row = 0
    for offsets, data in _binary_chunks(batch.column(C.TEXT_EMBEDS)):
        for start, end in zip(offsets[:-1], offsets[1:], strict=True):
            length = int(lengths[row])
            if (end - start) != length * dim * 2:
                raise ValueError(f"row {row}: text embedding of {end - start} bytes for {length} x {dim} float16")
            embeds[row, :length] = data[start:end].view("<f2").reshape(length, dim)
            embeds[row, length:] = 0
            row += 1
    mask = (np.arange(embeds.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    out = {
        C.LATENTS: torch.from_numpy(latents),
        C.TEXT_EMBEDS: torch.from_numpy(embeds),
        C.TEXT_MASK: torch.from_numpy(mask),
        C.SAMPLE_ID: batch.column(C.SAMPLE_ID).to_pylist(),
    }
    if source_latents is not None:
        out[C.SOURCE_LATENTS] = torch.from_numpy(source_latents)
    if extra_latents is not None:
        out[C.EXTRA_SOURCE_LATENTS] = torch.from_numpy(extra_latents)
    return out


def reference_counts(batch: pa.Table, resolution: int) -> np.ndarray:
    """Input images per row: 0 on text-to-image rows, 1 on edits, 1 + the extra references on Edit-Plus rows."""
    source = C.source_latents_column(resolution)
    if source not in batch.column_names:
        return np.zeros(batch.num_rows, dtype=np.int64)
    counts = pc.is_valid(batch.column(source)).to_numpy(zero_copy_only=False).astype(np.int64)
    extra = C.extra_source_latents_column(resolution)
    if extra in batch.column_names and not pa.types.is_null(batch.column(extra).type):  # all null: no references
        if not pa.types.is_list(batch.column(extra).type):
            raise TypeError(f"{extra} must be list<binary>, got {batch.column(extra).type}")
        counts += pc.fill_null(pc.list_value_length(batch.column(extra)), 0).to_numpy(zero_copy_only=False)
    return counts


def _extra_references(batch: pa.Table, resolution: int, shape: tuple[int, ...]) -> np.ndarray | None:
    """References 2..n of Edit-Plus rows as ``[B, n - 1, *shape]`` float16, or None when the rows have none; rows
    with different counts are an error (``iter_bucketed_batches`` keeps them apart)."""
    extra = C.extra_source_latents_column(resolution)
    if extra not in batch.column_names or batch.column(extra).null_count == batch.num_rows:
        return None
    counts = set(reference_counts(batch, resolution).tolist())
    if len(counts) != 1:
        raise ValueError(
            f"decode_batch takes edit rows with one number of input images, got {sorted(counts)}; "
            "use iter_bucketed_batches"
        )
    references = counts.pop() - 1
    flat = pc.list_flatten(batch.column(extra))
    values = fixed_size_rows(flat, shape, "extra source latents (the target's shape)")
    return values.reshape(batch.num_rows, references, *shape)


def iter_bucketed_batches(
    batches: Iterable[pa.RecordBatch | pa.Table | dict[str, np.ndarray]],
    batch_size: int,
    resolution: int,
    *,
    drop_last: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Regroup a stream of row batches (any buckets) into decoded batches of ``batch_size`` rows of one shape.

    Rows wait in one buffer per bucket (Arrow slices, no copies) until it holds a full batch; edit rows (with source
    latents) wait apart from text-to-image rows and by their number of input images, so a batch is all of one kind
    and every row has as many condition frames; rows without latents
    at ``resolution`` are skipped; at the end, partial batches are emitted unless ``drop_last``. Order within a
    bucket is kept, so a seeded stream gives the same batches every time. Feed it ``batch_format="pyarrow"``.
    """
    buffers: dict[str, list[pa.Table]] = {}
    counts: dict[str, int] = {}
    latents = C.latents_column(resolution)

    def take(bucket: str, count: int) -> pa.Table:
        merged = pa.concat_tables(buffers[bucket]) if len(buffers[bucket]) > 1 else buffers[bucket][0]
        head, rest = merged.slice(0, count), merged.slice(count)
        buffers[bucket] = [rest] if rest.num_rows else []
        counts[bucket] -= count
        return head

    for batch in batches:
        batch = as_table(batch)
        if batch.column(latents).null_count:
            batch = batch.filter(pc.is_valid(batch.column(latents)))
        buckets = batch.column(C.BUCKET).to_numpy(zero_copy_only=False)
        references = reference_counts(batch, resolution)
        if references.any():
            kinds = np.where(references > 0, np.char.add("+edit", references.astype(str)), "")
            buckets = np.char.add(buckets.astype(str), kinds).astype(object)
        for bucket in np.unique(buckets):
            part = batch.filter(pa.array(buckets == bucket)) if len(np.unique(buckets)) > 1 else batch
            buffers.setdefault(str(bucket), []).append(part)
            counts[str(bucket)] = counts.get(str(bucket), 0) + part.num_rows
            while counts[str(bucket)] >= batch_size:
                yield decode_batch(take(str(bucket), batch_size), resolution)
    if not drop_last:
        for bucket in sorted(buffers):
            if counts.get(bucket, 0):
                yield decode_batch(take(bucket, counts[bucket]), resolution)
