"""Stage-3 caption operators and the CLIP-embedding operators (alignment, NSFW head, aesthetic head)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.clip import ClipConfig
from models.embedding_head import EmbeddingHead
from pipelines.operators.caption import CaptionScores, fuse_captions, invalid_caption_reason
from pipelines.operators.clip_scores import ClipScores, ClipScoresConfig, clip_checks
from store.columns import (
    CAPTION_FUSED,
    CAPTION_INVALID_REASON,
    SCORE_AESTHETIC,
    SCORE_CAPTION_INVALID,
    SCORE_CAPTION_TOKENS,
    SCORE_CLIP_ALIGNMENT,
    SCORE_NSFW,
)


@pytest.mark.parametrize(
    "caption,reason",
    [
        ("A golden retriever catching a red frisbee in a park.", ""),
        ("一只金毛犬在公园里接飞盘", ""),
        ("Sorry, I cannot describe this image.", "refusal"),
        ("抱歉，我无法描述这张图片。", "refusal_zh"),
        ("IMG_2041.JPG", "filename"),
        ("image 3", "placeholder"),
        ("https://example.invalid/a.jpg", "url"),
        ("Beach at sunset stock photo, royalty-free", "stock_boilerplate"),
        ("  ", "empty"),
    ],
)
def test_invalid_caption(caption, reason):
    assert invalid_caption_reason(caption) == reason


def test_caption_scores_tokens_and_split():
    scorer = CaptionScores()
    batch = {
        "caption": np.array(["A red fox", ("word " * 2000).strip(), "caf\ufffd", ""], dtype=object),
        "caption_valid_utf8": np.array([True, True, False, True]),
        "ann_caption": np.array(["A red fox sitting in snow.", "", "A cup of coffee.", ""], dtype=object),
    }
    out = scorer(batch)
    assert out[SCORE_CAPTION_TOKENS][0] == 3  # "A", " red", " fox" in the Qwen2 vocabulary
    assert out[SCORE_CAPTION_TOKENS][1] == 2000  # passes the long caption; the check drops it
    assert list(out[SCORE_CAPTION_INVALID]) == [0.0, 0.0, 1.0, 1.0]
    assert list(out[CAPTION_INVALID_REASON]) == ["", "", "caption_invalid:invalid_utf8", "caption_invalid:empty"]
    assert out[CAPTION_FUSED][0] == "A red fox sitting in snow."  # raw adds nothing: the recaption alone
    assert fuse_captions("Eiffel Tower", "A tall iron tower at dusk.") == "A tall iron tower at dusk. Eiffel Tower"
    assert fuse_captions("just raw", "") == "just raw"


def _image_bytes(value: int) -> bytes:
    image = np.full((120, 160, 3), value, np.uint8)
    cv2.circle(image, (80, 60), 30, (255 - value, 40, 200), -1)
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_clip_scores_with_heads(tmp_path):
    torch.manual_seed(0)
    # A head that scores exactly the first embedding component, so the expected value is known.
    head = EmbeddingHead([32, 1])
    with torch.no_grad():
        head.layers[0].weight.zero_()
        head.layers[0].weight[0, 0] = 1.0
        head.layers[0].bias.zero_()
    head.save(tmp_path / "aesthetic.safetensors")
    EmbeddingHead([32, 8, 1]).save(tmp_path / "nsfw.safetensors")
    config = ClipScoresConfig(
        clip=ClipConfig(seed=0),
        aesthetic_head=str(tmp_path / "aesthetic.safetensors"),
        nsfw_head=str(tmp_path / "nsfw.safetensors"),
    )
    scorer = ClipScores(config)
    batch = {
        "image_bytes": np.array([_image_bytes(30), b"not an image", _image_bytes(200)], dtype=object),
        "caption": np.array(["a dark picture", "x", "a bright picture"], dtype=object),
    }
    out = scorer(batch)
    assert np.isnan(out[SCORE_CLIP_ALIGNMENT][1]) and np.isnan(out[SCORE_NSFW][1])  # undecodable: no score
    embeddings = out["clip_embedding"].astype(np.float32)
    np.testing.assert_allclose(out[SCORE_AESTHETIC][[0, 2]], embeddings[[0, 2], 0], atol=2e-3)
    assert np.all((out[SCORE_NSFW][[0, 2]] > 0) & (out[SCORE_NSFW][[0, 2]] < 1))
    text = scorer.clip.encode_texts(["a dark picture"])[0].numpy()
    assert out[SCORE_CLIP_ALIGNMENT][0] == pytest.approx(float(embeddings[0] @ text), abs=2e-3)
    assert {check.name for check in clip_checks(config)} == {"clip_alignment", "nsfw", "aesthetic"}


def test_unconfigured_heads_are_disabled_not_dropping():
    config = ClipScoresConfig(clip=ClipConfig())
    out = ClipScores(config)({"image_bytes": np.array([_image_bytes(90)], dtype=object), "caption": np.array(["x"])})
    assert np.isnan(out[SCORE_NSFW][0]) and np.isnan(out[SCORE_AESTHETIC][0])
    assert [check.name for check in clip_checks(config)] == ["clip_alignment"]
    with pytest.raises(ValueError, match="expects 16-d embeddings"):
        path = "/tmp/_head16.safetensors"
        EmbeddingHead([16, 1]).save(path)
        ClipScores(ClipScoresConfig(clip=ClipConfig(), nsfw_head=path))


def _constant_head(path, value: float) -> str:
    head = EmbeddingHead([32, 1])
    with torch.no_grad():
        head.layers[0].weight.zero_()
        head.layers[0].bias.fill_(value)
    head.save(path)
    return str(path)


def test_model_checks_pass_and_fail(tmp_path):
    from pipelines.operators.caption import caption_checks
    from pipelines.operators.thresholds import FilterThresholds

    thresholds = FilterThresholds()
    images = np.array([_image_bytes(60)], dtype=object)
    outcomes = {}
    for label, nsfw_logit, aesthetic in (("clean", -8.0, 7.0), ("flagged", 8.0, 2.0)):
        config = ClipScoresConfig(
            clip=ClipConfig(),
            nsfw_head=_constant_head(tmp_path / f"nsfw_{label}.safetensors", nsfw_logit),
            aesthetic_head=_constant_head(tmp_path / f"aes_{label}.safetensors", aesthetic),
        )
        out = ClipScores(config)({"image_bytes": images, "caption": np.array(["a picture"], dtype=object)})
        checks = {check.name: check for check in clip_checks(config)}
        outcomes[label] = {
            name: check.reason(float(out[check.column][0]), thresholds)
            for name, check in checks.items()
            if name != "clip_alignment"
        }
    assert outcomes["clean"] == {"nsfw": None, "aesthetic": None}
    assert outcomes["flagged"] == {"nsfw": "nsfw", "aesthetic": "aesthetic:low"}

    alignment = clip_checks(ClipScoresConfig(clip=ClipConfig()))[0]
    assert alignment.reason(0.3, thresholds) is None and alignment.reason(-0.2, thresholds) == "clip_alignment:low"

    checks = {check.name: check for check in caption_checks()}
    assert checks["caption_tokens"].reason(40, thresholds) is None
    assert checks["caption_tokens"].reason(5000, thresholds) == "caption_tokens:too_long"
    assert checks["caption_invalid"].reason(0.0, thresholds) is None
    assert checks["caption_invalid"].reason(1.0, thresholds) == "caption_invalid"
