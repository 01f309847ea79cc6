"""The encoding stages called in-process: the CPU stage decodes and crops, the VAE actor gets uint8 pixels only and
makes one VAE call per crop shape in its batch, and batching changes no latent beyond float rounding."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from models.generation import edit_source_size, resize_lanczos
from models.vae import images_to_tensor
from pipelines import encode
from pipelines.decode import DecodeConfig, decode_image
from pipelines.encode import (
    EncodeConfig,
    PreparePixels,
    VaeEncodeStage,
    cover_and_crop,
    pixels,
    pixels_column,
    shape_groups,
    source_pixels_column,
)
from pipelines.produce import to_store_table
from pipelines.sources import make_batch
from pipelines.synth.sample_corpus import photo_like, png_bytes
from store import columns as C

RESOLUTIONS = [48, 64]
CONFIG = EncodeConfig(preset="tiny", resolutions=RESOLUTIONS, edit_vision_area=56 * 56)
FULL = DecodeConfig(analysis_short_side=1 << 20)


def _exif_rotated(image: np.ndarray) -> bytes:
    """A JPEG stored landscape with EXIF orientation 6: displayed as portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def _mixed_batch() -> dict[str, np.ndarray]:
    """Mixed aspect ratios (1x1, 4x3, 3x4, 9x16, an EXIF-rotated 9x16), a source too small for 64 px, broken bytes,
    an edit triplet, and an edit triplet whose input image is broken."""
    rng = np.random.default_rng(0)
    rows = [  # (image bytes, source image bytes, task)
        (png_bytes(photo_like(rng, 80, 80)), b"", "t2i"),
        (png_bytes(photo_like(rng, 72, 96)), b"", "t2i"),
        (png_bytes(photo_like(rng, 96, 72)), b"", "t2i"),
        (png_bytes(photo_like(rng, 128, 72)), b"", "t2i"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), b"", "t2i"),
        (png_bytes(photo_like(rng, 80, 80)), png_bytes(photo_like(rng, 96, 96)), "edit"),
        (png_bytes(photo_like(rng, 56, 56)), b"", "t2i"),
        (_exif_rotated(photo_like(rng, 72, 128)), b"", "t2i"),
        (png_bytes(photo_like(rng, 80, 80)), b"not an image", "edit"),
    ]
    count = len(rows)
    return make_batch(
        "test",
        [image for image, _, _ in rows],
        [f"caption {index}" for index in range(count)],
        [str(index) for index in range(count)],
        [""] * count,
        [""] * count,
        task=[task for _, _, task in rows],
        source_images=[source for _, source, _ in rows],
    )


def _crops(batch: dict[str, np.ndarray]) -> list[tuple[int, int, bool, np.ndarray]]:
    """Every prepared crop: (row, resolution, is_source, uint8 [H, W, 3])."""
    out = []
    for row in range(len(batch[C.SAMPLE_ID])):
        for resolution in RESOLUTIONS:
            height, width = batch[C.height_column(resolution)][row], batch[C.width_column(resolution)][row]
            for is_source, column in ((False, pixels_column(resolution)), (True, source_pixels_column(resolution))):
                if height > 0 and len(batch[column][row]):
                    out.append((row, resolution, is_source, pixels(batch[column][row], height, width)))
    return out


@pytest.fixture(scope="module")
def vae_stage() -> VaeEncodeStage:
    return VaeEncodeStage(CONFIG)


def _count_calls(stage: VaeEncodeStage, monkeypatch) -> list[np.ndarray]:
    """Wraps the stage's ``LatentVAE.encode``: each call's input, back as the uint8 [B, H, W, 3] it was made from."""
    calls: list[np.ndarray] = []
    encode_images = stage.vae.encode

    def counted(images: torch.Tensor, **kwargs) -> torch.Tensor:
        calls.append(((images.float() + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return encode_images(images, **kwargs)

    monkeypatch.setattr(stage.vae, "encode", counted)
    return calls


def _alone(stage: VaeEncodeStage, crop: np.ndarray) -> np.ndarray:
    """The crop encoded on its own, as the store keeps it (float16)."""
    latents = stage.vae.encode(images_to_tensor(np.array(crop)[None])).float().numpy()[0]
    return C.bytes_tensor(C.tensor_bytes(latents), latents.shape).astype(np.float32)


def _stored(out: dict[str, np.ndarray], row: int, resolution: int, is_source: bool, crop: np.ndarray) -> np.ndarray:
    column = (C.source_latents_column if is_source else C.latents_column)(resolution)
    shape = (C.LATENT_CHANNELS, crop.shape[0] // 8, crop.shape[1] // 8)
    return C.bytes_tensor(out[column][row], shape).astype(np.float32)


def test_gpu_actors_receive_pixels(vae_stage, monkeypatch):
    batch = _mixed_batch()
    prepared = PreparePixels(CONFIG)(batch)

    # The CPU stage: decode errors recorded as before; no image bytes leave it, only uint8 crops of the bucket size.
    errors = list(prepared[C.ENCODE_ERROR])
    assert errors[4].startswith("decode:broken_file") and errors[8].startswith("decode_source_image:broken_file")
    assert [bool(e) for e in errors] == [row in (4, 8) for row in range(9)]
    assert "image_bytes" not in prepared and "source_image_bytes" not in prepared
    assert list(prepared[C.BUCKET]) == ["1x1", "4x3", "3x4", "9x16", "", "1x1", "1x1", "9x16", ""]
    assert prepared[C.height_column(64)][6] == -1 and prepared[pixels_column(64)][6] == b""  # would need enlarging
    for row, _, is_source, crop in _crops(prepared):
        data = batch["source_image_bytes" if is_source else "image_bytes"][row]
        expected = cover_and_crop(decode_image(data, FULL).image, crop.shape[1], crop.shape[0])
        assert crop.dtype == np.uint8 and np.array_equal(crop, expected)  # what the actor used to compute itself
    source = decode_image(batch["source_image_bytes"][5], FULL).image
    seen = resize_lanczos(Image.fromarray(source), *edit_source_size(CONFIG.edit_vision_area, 96, 96))
    vision = pixels(prepared[C.VISION_PIXELS][5], prepared[C.VISION_HEIGHT][5], prepared[C.VISION_WIDTH][5])
    assert np.array_equal(vision, np.asarray(seen))  # the text stage's input image, decoded once, upstream

    # The GPU stage: one VAE call per distinct crop shape, each call one shape, every crop in exactly one call.
    calls = _count_calls(vae_stage, monkeypatch)
    out = vae_stage(prepared)
    crops = _crops(prepared)
    shapes = {crop.shape[:2] for *_, crop in crops}
    assert len(calls) == len(shapes) == len(shape_groups(prepared, RESOLUTIONS)) == 5
    assert len(crops) == 15  # 6 of them 48x48: three buckets, targets and an edit source
    assert sorted(call.shape[1:3] for call in calls) == sorted(shapes)
    assert sorted(image.tobytes() for call in calls for image in call) == sorted(c.tobytes() for *_, c in crops)
    assert not any(column.startswith(("pixels_", "source_pixels_")) for column in out)

    # Batching changes no latent beyond float rounding: each stored latent equals the crop encoded alone within one
    # float16 step (batched and single convolutions round differently in float32, about 5e-7 here).
    monkeypatch.undo()
    for row, resolution, is_source, crop in crops:
        stored, alone = _stored(out, row, resolution, is_source, crop), _alone(vae_stage, crop)
        np.testing.assert_allclose(stored, alone, rtol=2e-3, atol=1e-3)
    assert out[C.latents_column(64)][6] is None and out[C.source_latents_column(48)][0] is None

    table = to_store_table(out, RESOLUTIONS)  # the store contract is unchanged: the failed rows left out
    assert table.num_rows == 7 and table.column(C.source_latents_column(64)).null_count == 6


def test_vae_call_spans_resolutions(vae_stage, monkeypatch):
    """Crops of different resolutions at one shape share a call. Real bucket sizes coincide only at large sizes (the
    published 9x16 size at 1328 is 928x1664, which 1248 px also gives), so the prepared batch is edited to make a
    64-px crop 48x48, as it would be if its bucket size there were 48x48."""
    prepared = PreparePixels(CONFIG)(_mixed_batch())
    row = 1  # its 64-px crop (48 high, 80 wide) is the only one of its shape
    image = decode_image(_mixed_batch()["image_bytes"][row], FULL).image
    prepared[pixels_column(64)][row] = cover_and_crop(image[4:68, 10:90], 48, 48).tobytes()
    prepared[C.height_column(64)][row] = prepared[C.width_column(64)][row] = 48
    calls = _count_calls(vae_stage, monkeypatch)
    out = vae_stage(prepared)
    assert len(calls) == len({crop.shape[:2] for *_, crop in _crops(prepared)}) == 4
    monkeypatch.undo()
    crop = pixels(prepared[pixels_column(64)][row], 48, 48)
    np.testing.assert_allclose(_stored(out, row, 64, False, crop), _alone(vae_stage, crop), rtol=2e-3, atol=1e-3)


def test_prepared_rows_travel_as_arrow_binary(vae_stage):
    """Prepared blocks are plain Arrow (binary pixels, int shapes): no pickled-object fallback, and a block without
    any edit row concatenates with one that has edits (Ray Data builds batches across blocks this way)."""
    from ray.data.block import BlockAccessor

    batch = _mixed_batch()
    prepared = PreparePixels(CONFIG)(batch)
    pairs_only = PreparePixels(CONFIG)({key: value[:2] for key, value in batch.items()})
    blocks = [BlockAccessor.batch_to_block(b) for b in (pairs_only, prepared)]
    for block in blocks:
        for resolution in RESOLUTIONS:
            assert block.schema.field(pixels_column(resolution)).type == pa.binary()
            assert block.schema.field(source_pixels_column(resolution)).type == pa.binary()
            assert block.schema.field(C.height_column(resolution)).type == pa.int64()
    merged = BlockAccessor.for_block(pa.concat_tables(blocks)).to_batch_format("numpy")
    out = vae_stage(merged)
    assert sum(latents is not None for latents in out[C.latents_column(48)]) == 2 + 7
    with pytest.raises(ValueError, match="PreparePixels"):
        vae_stage(batch)  # image bytes are not the VAE stage's input
    assert encode.pixels_bytes(np.zeros((2, 3, 3), np.uint8)) == bytes(18)
