"""Test fixtures built from the sample corpus (``pipelines/synth/sample_corpus.py``): the broken inputs the curation
test feeds the filters, and latent-store tables encoded with the tiny preset's VAE and condition encoder in this
process (no Ray, no curation) for the consumer tests."""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from pipelines.synth.sample_corpus import jpeg, photo_like, png_bytes, sample_pairs


def bad_inputs() -> list[tuple[str, bytes, bytes]]:
    """``(name, image bytes, caption bytes)`` for the broken-input corpus of the bad-input test."""
    rng = np.random.default_rng(1)
    good = photo_like(rng, 300, 400)
    good_jpeg = jpeg(good)

    def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **kwargs)
        return buffer.getvalue()

    rgba = Image.fromarray(good).convert("RGBA")
    rgba.putalpha(Image.fromarray((rng.random((300, 400)) * 255).astype(np.uint8)))
    sixteen = Image.fromarray(good[:, :, 0].astype(np.uint16) * 257)  # mode I;16
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.fromarray(photo_like(rng, 300, 300)) for _ in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    bomb = bytearray(encode(Image.new("L", (16, 16)), "PNG"))
    bomb[16:24] = (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big")  # IHDR width and height...
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")  # ...with a valid CRC: a believable header
    caption = b"A photograph of a hill."
    return [
        ("truncated_jpeg", good_jpeg[: len(good_jpeg) // 2], caption),
        ("zero_bytes", b"", caption),
        ("random_bytes", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), caption),
        ("png_alpha", encode(rgba, "PNG"), caption),
        ("png_16bit", encode(sixteen, "PNG"), caption),
        ("png_palette", encode(Image.fromarray(good).convert("P"), "PNG"), caption),
        ("cmyk_jpeg", encode(Image.fromarray(good).convert("CMYK"), "JPEG"), caption),
        ("one_pixel", encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), caption),
        ("bomb_header", bytes(bomb), caption),
        ("animated_gif", gif.getvalue(), caption),
        ("exif_rotated", encode(Image.fromarray(good), "JPEG", exif=exif), caption),
        # Good images (each its own, so that deduplication does not hide the caption's fault) with bad captions.
        ("invalid_utf8", jpeg(photo_like(rng, 300, 400)), b"caf\xe9 \xff\xfe au lait"),
        ("empty_caption", jpeg(photo_like(rng, 300, 400)), b""),
        ("huge_caption", jpeg(photo_like(rng, 300, 400)), ("word " * 20000).encode()),
    ]


def encoded_sample_table(
    num_samples: int,
    seed: int = 0,
    *,
    resolutions: tuple[int, ...] = (256,),
    source: str = "sample",
    max_upscale: float = 2.0,
):
    """``num_samples`` sample pairs encoded with the tiny VAE and condition encoder, as a latent-store table.

    Stages cycle through 1..7 and categories alternate, so filters have something to select; no Ray, no
    curation: for tests and benchmarks of the consumers.
    """
    from pipelines.encode import EncodeConfig, PreparePixels, TextEncodeStage, VaeEncodeStage
    from pipelines.produce import to_store_table
    from pipelines.sources import make_batch

    pairs = sample_pairs(num_samples, seed=seed, size=320, large_size=400)
    batch = make_batch(
        source,
        [p[1] for p in pairs],
        [p[2] for p in pairs],
        [p[0] for p in pairs],
        [""] * len(pairs),
        [""] * len(pairs),
    )
    batch["stage"] = np.array([1 + i % 7 for i in range(len(pairs))], dtype=np.int8)
    batch["category"] = np.array(
        ["text_rendering" if i % 3 == 0 else "general" for i in range(len(pairs))], dtype=object
    )
    config = EncodeConfig(resolutions=list(resolutions), max_upscale=max_upscale)
    encoded = TextEncodeStage(config)(VaeEncodeStage(config)(PreparePixels(config)(batch)))
    return to_store_table(encoded, list(resolutions))


def encoded_triplet_table(
    triplets: list[tuple[np.ndarray | list[np.ndarray], str, np.ndarray]],
    *,
    task: str = "edit",
    resolutions: tuple[int, ...] = (256,),
    source: str = "sample-edit",
    edit_vision_area: int = 56 * 56,
    max_upscale: float = 4.0,
):
    """(source image, instruction, target image) triplets (uint8 RGB arrays) encoded as edit rows of a latent-store
    table, through the producers' encoding stages: source latents beside target latents, the instruction with the
    edit template and the source image through the vision tower. A list of source images makes an Edit-Plus row
    (its references 2..n stored too, the instruction encoded with the Edit-Plus template). No Ray, no curation: for
    tests and benchmarks."""
    from pipelines.encode import EncodeConfig, PreparePixels, TextEncodeStage, VaeEncodeStage
    from pipelines.produce import to_store_table
    from pipelines.sources import make_batch

    targets = [png_bytes(target) for _, _, target in triplets]
    batch = make_batch(
        source,
        targets,
        [instruction for _, instruction, _ in triplets],
        [f"triplet-{index}" for index in range(len(triplets))],
        [""] * len(triplets),
        [""] * len(triplets),
        task=task,
        source_images=[png_bytes(_sources(images)[0]) for images, _, _ in triplets],
        extra_source_images=[[png_bytes(image) for image in _sources(images)[1:]] for images, _, _ in triplets],
    )
    batch["stage"] = np.full(len(triplets), 7, dtype=np.int8)
    batch["category"] = np.full(len(triplets), "general", dtype=object)
    config = EncodeConfig(resolutions=list(resolutions), max_upscale=max_upscale, edit_vision_area=edit_vision_area)
    encoded = TextEncodeStage(config)(VaeEncodeStage(config)(PreparePixels(config)(batch)))
    return to_store_table(encoded, list(resolutions))


def _sources(images: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    return list(images) if isinstance(images, list | tuple) else [images]


def structured_picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 gradients and a block of one colour, not noise: the VAE and the vision tower see real shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    image[top : top + height // 3, left : left + width // 3] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)
