"""Synthetic edit triplets: exact depth, consistent novel views, edits confined to what the instruction names, text
read back by OCR, shapes composed from two pictures, blanked areas filled, determinism, failures reported as rows,
and the Ray source."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from models.ocr import OcrConfig, OcrEngine
from pipelines.decode import decode_image
from pipelines.synth import captions
from pipelines.synth.edits import (
    BLANK_RGB,
    EDIT_COLUMNS,
    EDIT_KINDS,
    SHAPE_NAMES,
    EditGenerator,
    EditSynthConfig,
    EditTriplet,
    generate_edit,
    kind_of,
    preview_edits,
    sample_flat_scene,
    sample_view,
    sample_view_change,
    synthetic_edit_dataset,
    triplets_batch,
)
from pipelines.synth.scenes import FAR_LEVEL, Box, Camera, Ground, Light, Scene, Sphere, depth_to_image, render
from pipelines.synth.verify import ocr_accuracy
from store import columns as C
from store.columns import RENDERED_TEXT

COLOR_OF_RGB = {color.rgb: color for color in captions.PALETTE}
SHAPES = "|".join(SHAPE_NAMES)


def only(kind: str, **overrides) -> EditSynthConfig:
    values = {"seed": 5, "kinds": {kind: 1.0}, "size": (128, 128), "instruction_zh_ratio": 0.0, **overrides}
    return EditSynthConfig(**values)


def unit_rays(camera_position, look_at, fov_degrees: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions [H, W, 3] of a pinhole camera, and its forward axis, written out independently."""
    forward = np.subtract(look_at, camera_position, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.array([-forward[2], 0.0, forward[0]]) / np.hypot(forward[0], forward[2])  # forward x (0, 1, 0)
    up = np.cross(right, forward)
    tan_half = math.tan(math.radians(fov_degrees) / 2)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x = (2 * cols / width - 1) * tan_half * width / height
    y = (1 - 2 * rows / height) * tan_half
    rays = forward + x[..., None] * right + y[..., None] * up
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True), forward


# Depth exactness.
@pytest.mark.parametrize("position", [(0.0, 1.0, 6.0), (3.0, 4.0, 5.0)])
def test_sphere_centre_depth_is_distance_minus_radius(position) -> None:
    center, radius = (0.0, 1.0, 0.0), 1.5
    light = Light(direction=(0.0, 0.0, 1.0), intensity=0.7, ambient=0.2, shadows=False)
    scene = Scene((Sphere(center, radius, (200, 100, 50)),), ground=None, light=light)
    camera = Camera(position, center, fov_degrees=40)
    rgb, depth = render(scene, camera, 65, 65)  # odd: the centre pixel's ray is the camera axis
    distance = math.dist(position, center)
    assert depth[32, 32] == pytest.approx(distance - radius, abs=1e-5)
    assert np.isinf(depth[0, 0]) and depth.dtype == np.float32
    # Lambertian shading at the centre: the normal points back at the camera.
    normal = np.subtract(position, center) / distance
    shade = 0.2 + 0.7 * max(0.0, float(normal @ np.array([0.0, 0.0, 1.0])))
    assert rgb[32, 32].tolist() == [round(200 * shade), round(100 * shade), round(50 * shade)]
    # Off the axis, depth is the distance along the camera axis, not along the ray.
    rays, forward = unit_rays(position, center, 40, 65, 65)
    offset = np.subtract(position, center)
    with np.errstate(invalid="ignore"):  # NaN where the ray misses
        along = -(rays @ offset) - np.sqrt((rays @ offset) ** 2 - offset @ offset + radius**2)  # unit rays
    hit = np.isfinite(depth)
    assert hit.sum() > 100 and np.array_equal(hit, np.isfinite(along))
    np.testing.assert_allclose(depth[hit], (along * (rays @ forward))[hit], rtol=1e-5)


def test_ground_depth_matches_ray_plane_intersection() -> None:
    position, look_at = (1.0, 3.0, 8.0), (0.0, 0.0, 0.0)
    scene = Scene((), ground=Ground(height=0.0, half_size=1000.0, checker=0.0))
    rgb, depth = render(scene, Camera(position, look_at, fov_degrees=50), 49, 33)  # not square
    rays, forward = unit_rays(position, look_at, 50, 49, 33)
    with np.errstate(divide="ignore"):
        along = -position[1] / rays[..., 1]  # the unit ray meets y = 0
    expected = np.where(along > 0, along * (rays @ forward), np.inf)
    assert np.isinf(depth[0]).all() and np.isfinite(depth[-1]).all()  # sky above the horizon, ground below
    np.testing.assert_array_equal(np.isfinite(depth), np.isfinite(expected))
    np.testing.assert_allclose(depth[np.isfinite(depth)], expected[np.isfinite(expected)], rtol=1e-5)
    assert depth[16, 24] == pytest.approx(math.dist(position, look_at), rel=1e-6)  # the look-at point, centred


def test_nearer_object_occludes() -> None:
    camera = Camera((0.0, 1.0, 6.0), (0.0, 1.0, 0.0), fov_degrees=40)
    front = Sphere((0.0, 1.0, 0.0), 1.0, (255, 0, 0))
    back = Sphere((0.0, 1.0, -4.0), 2.0, (0, 0, 255))
    for objects in ((front, back), (back, front)):  # the order of the list does not matter
        rgb, depth = render(Scene(objects, ground=None), camera, 33, 33)
        assert depth[16, 16] == pytest.approx(5.0, abs=1e-5)
        assert rgb[16, 16, 0] > 0 and rgb[16, 16, 2] == 0
        assert (rgb[..., 2] > 0).any()  # the big sphere shows around the small one
    assert render(Scene((back,), ground=None), camera, 33, 33)[1][16, 16] == pytest.approx(8.0, abs=1e-5)
    cube = Box((-0.5, 0.5, 1.5), (0.5, 1.5, 2.5), (0, 255, 0))
    assert render(Scene((front, cube), ground=None), camera, 33, 33)[1][16, 16] == pytest.approx(3.5, abs=1e-5)
    # Turned by 45 degrees, the cube shows its vertical edge to the camera: sqrt(0.5) nearer than its centre.
    turned = Box((-0.5, 0.5, 1.5), (0.5, 1.5, 2.5), (0, 255, 0), yaw_degrees=45)
    depth = render(Scene((front, turned), ground=None), camera, 33, 33)[1]
    assert depth[16, 16] == pytest.approx(6 - 2 - math.sqrt(0.5), abs=1e-5)


def test_depth_image_convention() -> None:
    image = depth_to_image(np.array([[1.0, 2.0], [3.0, np.inf]], dtype=np.float32))
    assert image.shape == (2, 2, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all()
    assert image[..., 0].tolist() == [[255, round(255 - (255 - FAR_LEVEL) / 2)], [FAR_LEVEL, 0]]

    config = only("depth")
    triplet = generate_edit(config, 3)
    scene, camera = sample_view(EditGenerator(config).rng("depth", 3))
    rgb, depth = render(scene, camera, *config.size)
    assert np.array_equal(triplet.source, rgb) and np.array_equal(triplet.target, depth_to_image(depth))
    assert triplet.task == "depth" and "depth map" in triplet.instruction


# Novel views.
def test_orbit_geometry() -> None:
    camera = Camera((0.0, 2.0, 7.0), (0.0, 0.5, 0.0), fov_degrees=45)
    _, right, _ = camera.axes()
    left = camera.orbit(30)
    assert math.dist(left.position, left.look_at) == pytest.approx(math.dist(camera.position, camera.look_at))
    assert left.look_at == camera.look_at and left.position[1] == pytest.approx(2.0)
    assert np.dot(np.subtract(left.position, camera.position), right) < 0  # moved to its left
    back = left.orbit(-30).position
    np.testing.assert_allclose(back, camera.position, atol=1e-9)
    assert camera.orbit(0, 10).position[1] > 2.0 > camera.orbit(0, -10).position[1]
    with pytest.raises(ValueError, match="pole"):
        camera.orbit(0, 80)


def test_novel_view_is_the_render_from_the_orbited_camera() -> None:
    config = only("novel_view", elevation_ratio=0.5)
    for index in range(4):
        triplet = generate_edit(config, index)
        rng = EditGenerator(config).rng("novel_view", index)
        scene, camera = sample_view(rng)
        azimuth, elevation = sample_view_change(rng, camera, config)
        assert abs(azimuth) in config.azimuths
        assert f"{abs(azimuth):g} degrees to the {'left' if azimuth > 0 else 'right'}" in triplet.instruction
        assert np.array_equal(triplet.source, render(scene, camera, *config.size)[0])
        assert np.array_equal(triplet.target, render(scene, camera.orbit(azimuth, elevation), *config.size)[0])
        assert np.array_equal(triplet.source, render(scene, camera.orbit(0.0, 0.0), *config.size)[0])
        assert not np.array_equal(triplet.source, triplet.target)
        assert triplet.task == "novel_view" and triplet.region is None


# 2-D edits touch only what the instruction names.
def test_color_edit_changes_only_the_named_shape() -> None:
    config = only("color")
    for index in range(6):
        triplet = generate_edit(config, index)
        changed = (triplet.source != triplet.target).any(axis=2)
        assert changed.any() and np.array_equal(changed, triplet.region)
        (old,) = {tuple(pixel) for pixel in triplet.source[changed].tolist()}
        (new,) = {tuple(pixel) for pixel in triplet.target[changed].tolist()}
        old_name, new_name = COLOR_OF_RGB[old].en, COLOR_OF_RGB[new].en
        assert re.search(rf"the {old_name} ({SHAPES}) ", triplet.instruction), triplet.instruction
        assert triplet.instruction.endswith(f" {new_name}."), triplet.instruction
    chinese = generate_edit(config.model_copy(update={"instruction_zh_ratio": 1.0}), 0)
    changed = (chinese.source != chinese.target).any(axis=2)
    assert COLOR_OF_RGB[tuple(chinese.source[changed][0].tolist())].zh in chinese.instruction
    assert chinese.instruction.endswith(COLOR_OF_RGB[tuple(chinese.target[changed][0].tolist())].zh + "。")


def test_background_edit_changes_only_the_background() -> None:
    config = only("background")
    for index in range(6):
        triplet = generate_edit(config, index)
        changed = (triplet.source != triplet.target).any(axis=2)
        background = (triplet.source == triplet.source[0, 0]).all(axis=2)  # shapes keep off the corners
        assert np.array_equal(changed, background) and np.array_equal(changed, triplet.region)
        assert 0.3 < changed.mean() < 1.0
        (new,) = {tuple(pixel) for pixel in triplet.target[changed].tolist()}
        assert re.search(rf"(to|background|with a) {COLOR_OF_RGB[new].en}( one)?\.$", triplet.instruction)


def test_compose_pastes_the_named_shape_of_picture_1_into_picture_2() -> None:
    config = only("compose")
    sides = {"left": (1, 0), "right": (1, 1), "top": (0, 0), "bottom": (0, 1)}  # axis, half
    for index in range(8):
        triplet = generate_edit(config, index)
        assert triplet.error == "" and triplet.task == C.EDIT_PLUS and len(triplet.references) == 1
        second = triplet.references[0]
        # The first draw's scenes: Picture 1 and Picture 2 as generated (rows that needed a second draw are skipped).
        rng = EditGenerator(config).rng("compose", index)
        first_scene, second_scene = sample_flat_scene(rng, *config.size), sample_flat_scene(rng, *config.size)
        changed = (second != triplet.target).any(axis=2)
        assert changed.any() and np.array_equal(changed, triplet.region)
        assert np.array_equal(triplet.target[~changed], second[~changed])
        (pasted,) = {tuple(pixel) for pixel in triplet.target[changed].tolist()}
        color = COLOR_OF_RGB[pasted]
        shape = re.search(rf"the {color.en} ({SHAPES}) (from|of) Picture 1 ", triplet.instruction).group(1)
        assert "Picture 2" in triplet.instruction
        if not np.array_equal(first_scene.image(), triplet.source):
            continue
        assert np.array_equal(second_scene.image(), second)
        pairs = list(zip(first_scene.colors, first_scene.shapes, strict=True))
        (number,) = [k for k, (c, name) in enumerate(pairs) if c.en == color.en and name == shape]  # unique
        # The pasted pixels are that shape's mask moved as a whole, onto Picture 2's background only.
        mask_rows, mask_cols = np.nonzero(first_scene.labels == number + 1)
        rows, cols = np.nonzero(triplet.region)
        assert len(set((rows - mask_rows).tolist())) == len(set((cols - mask_cols).tolist())) == 1
        assert (second_scene.labels[triplet.region] == 0).all()
        side = re.search(r"in the (left|right|top|bottom) half of", triplet.instruction)
        if side:
            axis, half = sides[side.group(1)]
            where = cols if axis else rows
            middle = config.size[1 - axis] / 2
            assert (where >= middle).all() if half else (where < middle).all(), triplet.instruction
    chinese = generate_edit(config.model_copy(update={"instruction_zh_ratio": 1.0}), 0)
    changed = (chinese.references[0] != chinese.target).any(axis=2)
    color = COLOR_OF_RGB[tuple(chinese.target[changed][0].tolist())]
    assert re.fullmatch(rf"(把|将)图1.*{color.zh}({'|'.join(SHAPE_NAMES.values())}).*图2.*。", chinese.instruction)


def test_inpaint_source_is_the_target_with_a_grey_area() -> None:
    config = only("inpaint")
    assert BLANK_RGB not in COLOR_OF_RGB  # no scene pixel can be the blank
    for index in range(8):
        triplet = generate_edit(config, index)
        assert triplet.error == "" and triplet.task == C.INPAINT and triplet.references == ()
        region = triplet.region
        assert 0 < region.mean() < 0.3
        assert np.array_equal(triplet.source[~region], triplet.target[~region])
        assert (triplet.source[region] == BLANK_RGB).all()
        filled = {tuple(pixel) for pixel in triplet.target[region].tolist()}
        assert len(filled) >= 2 and BLANK_RGB not in filled  # part of a shape and background, not blank
        assert np.array_equal((triplet.source != triplet.target).any(axis=2), region)
        assert "grey" in triplet.instruction
    chinese = generate_edit(config.model_copy(update={"instruction_zh_ratio": 1.0}), 0)
    assert "灰色" in chinese.instruction and chinese.instruction.endswith("。")


def test_compose_and_inpaint_rows_carry_their_task_and_references() -> None:
    config = only("compose", kinds={"compose": 1.0, "inpaint": 1.0})
    triplets = [generate_edit(config, index) for index in range(4)]
    failed = EditTriplet(None, None, "", C.EDIT_PLUS, "compose", error="edit_synth:compose:no_room")
    batch = triplets_batch(config, [0, 1, 2, 3, 4], [*triplets, failed])
    second = C.source_image_bytes_column(2)
    by_key = {key: row for row, key in enumerate(batch[C.KEY])}
    for index, triplet in enumerate([*triplets, failed]):
        row = by_key[f"edit-{triplet.kind}-s5-{index:09d}"]
        assert batch[C.TASK][row] == {"compose": C.EDIT_PLUS, "inpaint": C.INPAINT}[triplet.kind]
        assert batch[C.SOURCE_ERROR][row] == triplet.error and not batch[C.source_image_bytes_column(3)][row]
        if triplet.error:
            assert batch[C.IMAGE_BYTES][row] == batch[C.SOURCE_IMAGE_BYTES][row] == batch[second][row] == b""
        elif triplet.kind == "compose":
            decoded = decode_image(batch[second][row])
            assert decoded.ok and np.array_equal(decoded.image, triplet.references[0])
        else:
            assert batch[second][row] == b""
    assert {kind_of(config, index) for index in range(4)} == {"compose", "inpaint"}


def test_preview_shows_every_input_of_a_compose_row() -> None:
    sheet = preview_edits(only("compose"), 1)
    single = preview_edits(only("inpaint"), 1)
    assert sheet.shape[1] > single.shape[1] >= 2 * 256  # Picture 1 | Picture 2 | target against input | target


@pytest.fixture(scope="module")
def ocr() -> OcrEngine:
    return OcrEngine(OcrConfig(num_threads=2))


def test_text_replacement_changes_only_the_text(ocr: OcrEngine) -> None:
    config = only("text_replace", size=(256, 256), text_languages={"en": 1.0}, text_units={"word": 1.0})
    for index in range(4):
        triplet = generate_edit(config, index)
        assert triplet.error == "" and triplet.task == "edit"
        changed = (triplet.source != triplet.target).any(axis=2)
        assert changed.any() and not (changed & ~triplet.region).any()
        assert triplet.region.mean() < 0.3
        old, new = re.fullmatch(r'.*"(.+)" (?:with|to) "(.+)"\.', triplet.instruction).groups()
        assert new == " ".join(triplet.rendered_text.split()) and old.lower() != new.lower()
        if index < 2:  # OCR reads the old word in the source and the new one in the target
            assert ocr_accuracy(ocr, triplet.source, old)[0] >= 0.9
            accuracy, read = ocr_accuracy(ocr, triplet.target, triplet.rendered_text)
            assert accuracy >= 0.9, (triplet.rendered_text, read)

    chinese = generate_edit(only("text_replace", size=(256, 256), text_languages={"zh": 1.0}), 1)
    changed = (chinese.source != chinese.target).any(axis=2)
    assert changed.any() and not (changed & ~chinese.region).any()
    assert re.fullmatch(r".*“(.+)”.*“(.+)”.*。", chinese.instruction).group(2) == "".join(chinese.rendered_text.split())


# Determinism, failures, the dataset.
def test_same_seed_and_index_same_triplet() -> None:
    config = EditSynthConfig(seed=9, size=(96, 96), text_languages={"en": 1.0})
    rows = list(range(8))
    assert {kind_of(config, index) for index in rows} == set(EDIT_KINDS)
    first = [generate_edit(config, index) for index in rows]
    fresh = EditGenerator(config)  # another generator, rows in another order
    second = [fresh.generate(index) for index in rows[::-1]][::-1]
    for one, other in zip(first, second, strict=True):
        assert one.instruction == other.instruction and one.kind == other.kind
        assert np.array_equal(one.source, other.source) and np.array_equal(one.target, other.target)
        assert len(one.references) == len(other.references) == (one.kind == "compose")
        assert all(np.array_equal(a, b) for a, b in zip(one.references, other.references, strict=True))
        if one.region is not None:
            assert np.array_equal(one.region, other.region)
    batch, again = triplets_batch(config, rows, first), triplets_batch(config, rows, second)
    assert batch[C.SAMPLE_ID].tolist() == again[C.SAMPLE_ID].tolist()
    assert batch[C.IMAGE_BYTES].tolist() == again[C.IMAGE_BYTES].tolist()
    other_seed = config.model_copy(update={"seed": 10})
    other = triplets_batch(other_seed, rows, [generate_edit(other_seed, index) for index in rows])
    assert not set(batch[C.SAMPLE_ID]) & set(other[C.SAMPLE_ID])
    weighted = EditSynthConfig(kinds={"color": 3.0, "depth": 1.0})
    assert sum(kind_of(weighted, index) == "color" for index in range(400)) == pytest.approx(300, abs=3)


def test_failed_triplet_is_a_row_with_a_source_error() -> None:
    config = only("text_replace", min_font_px=200, max_attempts=2)  # no text fits 200 px letters on 128 px
    triplet = generate_edit(config, 0)
    assert triplet.source is None and triplet.target is None
    assert triplet.error == "edit_synth:text_replace:too_long"
    batch = triplets_batch(config, [0, 1], [triplet, generate_edit(only("color"), 1)])
    assert batch[C.IMAGE_BYTES][0] == b"" and batch[C.SOURCE_IMAGE_BYTES][0] == b""
    assert batch[C.SOURCE_ERROR].tolist() == ["edit_synth:text_replace:too_long", ""]
    assert batch[C.SCORE_SOURCE_ERROR].tolist() == [1.0, 0.0]


def test_config_rejects_mistakes() -> None:
    with pytest.raises(ValueError, match="kinds"):
        EditSynthConfig(kinds={})
    with pytest.raises(ValueError, match="kinds"):
        EditSynthConfig(kinds={"sketch": 1.0})
    with pytest.raises(ValueError, match="size"):
        EditSynthConfig(size=(32, 32))
    with pytest.raises(ValueError, match="azimuths"):
        EditSynthConfig(azimuths=[0.0])


def test_ray_dataset(ray_session) -> None:
    config = EditSynthConfig(seed=2, size=(128, 128), pool={"min_size": 1, "max_size": 1, "batch_size": 3})
    num_rows = 10

    rows = synthetic_edit_dataset(config, num_rows).take_all()  # ten rows: fine on the driver
    assert len(rows) == num_rows and set(rows[0]) == set(EDIT_COLUMNS)
    expected_task = {
        "text_replace": "edit",
        "color": "edit",
        "background": "edit",
        "depth": "depth",
        "compose": C.EDIT_PLUS,
        "inpaint": C.INPAINT,
    }
    for row in rows:
        match = re.fullmatch(r"edit-([a-z_]+)-s2-(\d{9})", row[C.KEY])
        kind, index = match.group(1), int(match.group(2))
        assert kind == kind_of(config, index)
        assert row[C.SOURCE] == f"synthetic/edit-{kind}"
        assert row[C.TASK] == expected_task.get(kind, "novel_view") and row[C.SOURCE_ERROR] == ""
        references = (C.source_image_bytes_column(2),) if kind == "compose" else ()
        for column in (C.IMAGE_BYTES, C.SOURCE_IMAGE_BYTES, *references):
            decoded = decode_image(row[column])
            assert decoded.ok and (decoded.width, decoded.height) == (128, 128)
        assert bool(row[C.source_image_bytes_column(2)]) == (kind == "compose")
        assert bool(row[RENDERED_TEXT]) == (kind == "text_replace")
    assert {row[C.SOURCE] for row in rows} == {f"synthetic/edit-{kind}" for kind in EDIT_KINDS}
    assert len({row[C.SAMPLE_ID] for row in rows}) == len({row[C.KEY] for row in rows}) == num_rows
    # The same ids as generated here, in one batch and another process: rows depend on neither partitioning, worker
    # nor run.
    local = triplets_batch(config, list(range(num_rows)), [generate_edit(config, index) for index in range(num_rows)])
    assert {(row[C.KEY], row[C.SAMPLE_ID]) for row in rows} == set(zip(local[C.KEY], local[C.SAMPLE_ID], strict=True))
