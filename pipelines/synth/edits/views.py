"""3-D scenes: the depth map of a view, and the scene from an orbited camera."""

from __future__ import annotations

import math

import numpy as np

from pipelines.synth import scenes
from pipelines.synth.edits.config import (
    EditSynthConfig,
    EditTriplet,
    instruction_language,
    pick,
)

# 3-D scenes: depth and novel views.
DEPTH_EN = (
    "Estimate the depth map of this image.",
    "Generate the depth map of this image.",
    "Predict the depth of this scene as a grayscale image, nearer is brighter.",
    "Turn this image into its depth map.",
)
DEPTH_ZH = ("估计这张图片的深度图。", "生成这张图片的深度图。", "预测这个场景的深度图，越近越亮。")
SIDE_ZH = {"left": "左", "right": "右", "up": "上", "down": "下"}


def sample_view(rng: np.random.Generator) -> tuple[scenes.Scene, scenes.Camera]:
    scene = scenes.sample_scene(rng)
    return scene, scenes.sample_camera(rng, scene)


def sample_view_change(rng: np.random.Generator, camera: scenes.Camera, config: EditSynthConfig) -> tuple[float, float]:
    """``(azimuth, elevation)`` in degrees (positive: left, up), keeping the camera 5 to 75 degrees above ground."""
    azimuth = float(pick(rng, config.azimuths)) * (1 if rng.random() < 0.5 else -1)
    elevation = 0.0
    if config.elevations and rng.random() < config.elevation_ratio:
        offset = np.asarray(camera.position) - np.asarray(camera.look_at)
        current = math.degrees(math.asin(offset[1] / np.linalg.norm(offset)))
        options = [e * sign for e in config.elevations for sign in (1, -1) if 5 <= current + e * sign <= 75]
        elevation = float(pick(rng, options)) if options else 0.0
    return azimuth, elevation


def view_instruction(rng: np.random.Generator, azimuth: float, elevation: float, language: str) -> str:
    side = "left" if azimuth > 0 else "right"
    tilt = "up" if elevation > 0 else "down"
    if language == "zh":
        turn = f"向{SIDE_ZH[side]}旋转{abs(azimuth):g}度"
        if elevation:
            turn += f"，再向{SIDE_ZH[tilt]}旋转{abs(elevation):g}度"
        return pick(rng, ["将相机围绕场景{turn}。", "相机绕着场景{turn}。"]).format(turn=turn)
    turn = f"{abs(azimuth):g} degrees to the {side}"
    if elevation:
        turn += f" and {abs(elevation):g} degrees {tilt}"
    templates = ["Rotate the camera {turn} around the scene.", "Move the camera {turn} around the objects."]
    return pick(rng, templates).format(turn=turn)


def make_depth(rng: np.random.Generator, config: EditSynthConfig) -> EditTriplet:
    scene, camera = sample_view(rng)
    rgb, depth = scenes.render(scene, camera, *config.size)
    language = instruction_language(rng, config)
    instruction = pick(rng, DEPTH_ZH if language == "zh" else DEPTH_EN)
    return EditTriplet(rgb, scenes.depth_to_image(depth), instruction, "depth", "depth")


def make_novel_view(rng: np.random.Generator, config: EditSynthConfig) -> EditTriplet:
    scene, camera = sample_view(rng)
    azimuth, elevation = sample_view_change(rng, camera, config)
    source, _ = scenes.render(scene, camera, *config.size)
    target, _ = scenes.render(scene, camera.orbit(azimuth, elevation), *config.size)
    instruction = view_instruction(rng, azimuth, elevation, instruction_language(rng, config))
    return EditTriplet(source, target, instruction, "novel_view", "novel_view")
