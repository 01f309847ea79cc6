"""The shape-scene judge: right on ground truth, wrong when the caption says something else."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipelines.synth import shapes
from training.evaluation.judge import judge, reward, summarise

NUM_SCENES = 240


@pytest.fixture(scope="module")
def rendered():
    scenes = shapes.scenes(NUM_SCENES, seed=11, kinds=("one", "two"), split="any")
    images = [shapes.render_scene(scene, 64, np.random.default_rng([11, i])) for i, scene in enumerate(scenes)]
    return scenes, images


def _other(rng: np.random.Generator, pool, current: str) -> str:
    choices = [value for value in pool if value != current]
    return choices[int(rng.integers(len(choices)))]


def _wrong(scene: shapes.Scene, attribute: str, rng: np.random.Generator) -> shapes.Scene:
    pool = {"colour": shapes.COLOURS, "shape": shapes.SHAPES, "position": shapes.POSITIONS}[attribute]
    objects = tuple(
        dataclasses.replace(obj, **{attribute: _other(rng, list(pool), getattr(obj, attribute))})
        for obj in scene.objects
    )
    return dataclasses.replace(scene, objects=objects)


def test_judge_scores_ground_truth_and_fails_wrong(rendered):
    scenes, images = rendered
    right = summarise([judge(image, shapes.caption(scene)) for image, scene in zip(images, scenes, strict=True)])
    for attribute in ("colour", "shape", "position", "count"):
        assert right[attribute] >= 0.98, right
    assert right["n_colour"] == NUM_SCENES
    rng = np.random.default_rng(0)
    for attribute in ("colour", "shape", "position"):
        wrong = [_wrong(scene, attribute, rng) for scene in scenes]
        scores = summarise([judge(image, shapes.caption(w)) for image, w in zip(images, wrong, strict=True)])
        assert scores[attribute] <= 0.1, (attribute, scores)
    # Counting: an image of one object judged against a caption of two.
    single = [(image, scene) for image, scene in zip(images, scenes, strict=True) if len(scene.objects) == 1]
    image, scene = single[0]
    extra = shapes.Shape("red" if scene.objects[0].colour != "red" else "blue", "circle", "left")
    assert judge(image, dataclasses.replace(scene, objects=(*scene.objects, extra))).count is False


def test_judge_reads_words_and_rewards_partial_credit(rendered):
    word = shapes.Scene(background="yellow", word="SUN", word_colour="black")
    image = shapes.render_scene(word, 128)
    assert judge(image, shapes.caption(word)).text is True
    assert judge(image, 'the word "MOON" in black on yellow').text is False
    scenes, images = rendered
    caption = shapes.caption(scenes[0])
    assert reward(images[0], caption) == 1.0
    assert 0.0 < reward(images[0], shapes.caption(_wrong(scenes[0], "colour", np.random.default_rng(1)))) < 1.0


def _drawn(mask: np.ndarray, colour: str) -> np.ndarray:
    image = np.full((*mask.shape, 3), 200, np.uint8)
    image[mask > 0.5] = shapes.COLOURS[colour]
    return image


def test_shape_margin_ranks_outlines_the_share_cannot():
    """A clean blue square and a square with rounded corners (still read as a square) get the same share; the
    shape margin ranks the clean one higher, and a caption of another shape gets a negative margin."""
    size, centre = 64, 32.0
    square = shapes.shape_mask("square", size, centre, centre, 12.0)
    rounded = np.minimum(square, shapes.shape_mask("circle", size, centre, centre, 12.5))
    caption = "a big blue square in the centre, on a light grey background"
    clean, blob = _drawn(square, "blue"), _drawn(rounded, "blue")
    assert judge(clean, caption).shape and judge(blob, caption).shape
    assert reward(clean, caption) == reward(blob, caption) == 1.0
    detection = judge(clean, caption).detections[0]
    assert detection.shape_margin("square") > judge(blob, caption).detections[0].shape_margin("square") > 0
    assert detection.shape_margin("circle") < 0
    assert reward(clean, caption, shape_margin=1.0) > reward(blob, caption, shape_margin=1.0) > 1.0
    assert reward(clean, caption.replace("square", "circle"), shape_margin=1.0) < 0.75
    # No object at all: the share is 0 and the margin counts as -1.
    assert reward(np.full((size, size, 3), 200, np.uint8), caption, shape_margin=0.5) == -0.5


def test_caption_grammar_round_trips_and_refuses_others():
    for scene in shapes.scenes(200, seed=3, kinds=shapes.KINDS, split="any"):
        assert shapes.parse_caption(shapes.caption(scene)) == scene.spec()
    for bad in (
        "a cat on a mat",
        "a big red hexagon in the centre, on a white background",
        'the word "SUN" in red on blue',
    ):
        with pytest.raises(ValueError, match="caption|object"):
            shapes.parse_caption(bad)


def test_held_out_combinations_never_in_training():
    train = shapes.scenes(3000, seed=0, kinds=shapes.KINDS, split="train")
    assert not any(scene.held_out for scene in train)
    pairs = {(o.colour, o.shape) for scene in train for o in scene.objects}
    assert len(pairs) == len(shapes.COLOURS) * len(shapes.SHAPES) - len(shapes.HELD_OUT_PAIRS)
    held = shapes.scenes(200, seed=0, kinds=shapes.KINDS, split="held_out")
    assert all(scene.held_out for scene in held)


def test_held_out_words_are_spelled_with_tokens_training_never_shows():
    """Why reading held-out words is out of the nano model's reach: the condition encoder sees each held-out word only
    as Qwen2 tokens that no training caption holds, and its nano weights are random, so nothing tells it the letters."""
    from models.tokenizer import build_qwen2_tokenizer

    tokenizer = build_qwen2_tokenizer()
    train = shapes.scenes(500, seed=0, kinds=("word",), split="train")
    assert {scene.word for scene in train} == set(shapes.WORDS) - shapes.HELD_OUT_WORDS
    seen = {token for scene in train for token in tokenizer.encode(shapes.caption(scene))}
    held = {scene.word: scene for scene in shapes.scenes(200, seed=0, kinds=("word",), split="held_out")}
    assert set(held) == shapes.HELD_OUT_WORDS
    for word, scene in held.items():
        unseen = [token for token in tokenizer.encode(shapes.caption(scene)) if token not in seen]
        assert "".join(tokenizer.decode([token]) for token in unseen) == word


def test_nano_condition_encoder_keeps_a_shape_word_apart_from_its_colour():
    """Why held-out colour-shape pairs are the MMDiT's to compose, not the encoder's: in the nano preset's random
    condition encoder the hidden state of a caption's shape word hardly depends on the colour word before it (cosine
    similarity above 0.99 across colours) while different shape words stay far apart (below 0.5), so a held-out
    pair's condition is its two known words, each as in training."""
    import itertools

    from models.condition_encoder import ConditionEncoder
    from models.presets import build_components

    parts = build_components("nano", parts=("text_encoder", "tokenizer"))
    encoder = ConditionEncoder(parts.text_encoder, parts.tokenizer)
    pairs = list(itertools.product(shapes.COLOURS, shapes.SHAPES))
    rows = encoder.encode([f"a big {colour} {shape} on the left, on a white background" for colour, shape in pairs])
    word = 3  # "a", " big", the colour, the shape: each a single Qwen2 token
    assert all(len(parts.tokenizer.encode(f" {name}")) == 1 for name in (*shapes.COLOURS, *shapes.SHAPES))
    states = dict(zip(pairs, torch.nn.functional.normalize(rows.embeds[:, word], dim=-1), strict=True))
    across_colours = [
        float(states[a, shape] @ states[b, shape])
        for shape in shapes.SHAPES
        for a, b in itertools.combinations(shapes.COLOURS, 2)
    ]
    across_shapes = [
        float(states[colour, a] @ states[colour, b])
        for colour in shapes.COLOURS
        for a, b in itertools.combinations(shapes.SHAPES, 2)
    ]
    assert min(across_colours) > 0.99 and max(across_shapes) < 0.5, (min(across_colours), max(across_shapes))
