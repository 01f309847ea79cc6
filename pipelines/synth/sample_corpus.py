"""A small synthetic corpus for the demo and the tests: real image files, real captions, realistic defects.

Nothing is downloaded, so the built-in default job needs data it can make: photo-like scenes (gradients, shapes,
noise), text-rendering images (English and Chinese, with the CJK font when installed), and the defects the
filters exist for: exact and near duplicates, blur, darkness, tiny files, low resolution, broken bytes, refusal
captions. Written as img2dataset-style WebDataset shards (``NNNNN.tar`` with ``.jpg`` / ``.txt`` / ``.json``).

    python -c "from pipelines.synth.sample_corpus import write_sample_corpus; write_sample_corpus('data/sample', 64)"
"""

from __future__ import annotations

import io
import json
import pathlib
import tarfile

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
)
SUBJECTS = ("a red barn", "a blue lake", "an orange sunset", "a green hill", "a white lighthouse", "a yellow taxi")
WORDS_EN = ("OPEN", "SALE", "Coffee", "Hotel", "Welcome", "Exit", "Qwen Image", "Bakery")
WORDS_ZH = ("欢迎光临", "咖啡", "出口", "书店", "营业中", "通义千问")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in CJK_FONT_CANDIDATES:
        if pathlib.Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """RGB uint8: a sky-ground gradient, a few shapes, film-like noise: textured enough to pass quality checks."""
    top, bottom = rng.integers(40, 220, 3), rng.integers(20, 200, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    image = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1).astype(np.float32)
    for _ in range(rng.integers(3, 7)):
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            cv2.circle(image, center, int(rng.integers(10, max(11, min(height, width) // 3))), color, -1)
        else:
            corner = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.rectangle(image, center, corner, color, -1)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def text_image(rng: np.random.Generator, height: int, width: int, text: str) -> np.ndarray:
    """A sign: text on a plain background over a photo-like scene."""
    canvas = Image.fromarray(photo_like(rng, height, width))
    draw = ImageDraw.Draw(canvas)
    font = _font(max(16, height // 8))
    box = draw.textbbox((0, 0), text, font=font)
    x, y = (width - (box[2] - box[0])) // 2, (height - (box[3] - box[1])) // 2
    draw.rectangle((x - 10, y - 10, x + box[2] - box[0] + 10, y + box[3] - box[1] + 20), fill=(250, 250, 245))
    draw.text((x, y), text, font=font, fill=(20, 20, 20))
    return np.asarray(canvas)


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[
        1
    ].tobytes()


def sample_pairs(
    num_samples: int, seed: int = 0, size: int = 320, large_size: int = 704
) -> list[tuple[str, bytes, str]]:
    """``(key, image bytes, caption)`` triples; about a quarter carry one known defect each."""
    rng = np.random.default_rng(seed)
    pairs: list[tuple[str, bytes, str]] = []
    for index in range(num_samples):
        key = f"{index:06d}"
        side = size if index % 2 else large_size  # half the corpus is large enough for the 640p stages
        height, width = (side, side * 4 // 3) if index % 3 else (side * 4 // 3, side)
        kind = index % 12
        if kind in (3, 7):
            word = str(rng.choice(WORDS_ZH if kind == 7 else WORDS_EN))
            image, caption = text_image(rng, height, width, word), f'A sign that reads "{word}" in a street scene.'
        else:
            subject = str(rng.choice(SUBJECTS))
            image, caption = photo_like(rng, height, width), f"A photograph of {subject} under a clear sky."
        data = jpeg(image)
        if kind == 5 and pairs:  # an exact duplicate of the previous image, new caption
            data = pairs[-1][1]
        elif kind == 9:  # blurred
            data = jpeg(cv2.GaussianBlur(image, (0, 0), 6))
        elif kind == 10 and index % 24 == 10:  # too dark
            data = jpeg((image * 0.05).astype(np.uint8))
        elif kind == 11 and index % 24 == 11:  # low resolution
            data = jpeg(cv2.resize(image, (120, 90), interpolation=cv2.INTER_AREA))
        elif kind == 11:  # a refusal caption
            caption = "Sorry, I cannot describe this image."
        elif kind == 10:  # truncated file
            data = data[: len(data) // 3]
        pairs.append((key, data, caption))
    return pairs


def write_sample_corpus(
    folder: str | pathlib.Path, num_samples: int = 48, seed: int = 0, per_shard: int = 32
) -> list[str]:
    """Write WebDataset shards of ``sample_pairs``; returns the shard paths."""
    return write_webdataset(folder, sample_pairs(num_samples, seed), per_shard)


def write_webdataset(folder: str | pathlib.Path, pairs: list[tuple[str, bytes, str]], per_shard: int = 32) -> list[str]:
    """WebDataset shards (``<key>.jpg``, ``.txt``, ``.json``) of ``(key, image bytes, caption)``; the shard paths."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for shard_index, start in enumerate(range(0, len(pairs), per_shard)):
        path = folder / f"{shard_index:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for key, data, caption in pairs[start : start + per_shard]:
                meta = json.dumps({"key": key, "caption": caption, "status": "success"}).encode()
                for name, payload in ((f"{key}.jpg", data), (f"{key}.txt", caption.encode()), (f"{key}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        shards.append(str(path))
    return shards


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 RGB array as PNG bytes (lossless: what is encoded is exactly the array)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
