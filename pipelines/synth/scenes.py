"""A small numpy ray caster for simple 3-D scenes with exact depth: ground truth for depth and novel-view edits.

Scenes hold spheres, boxes (axis-aligned, optionally turned about the vertical axis) and a finite ground square,
lit by one directional light with ambient light and hard shadows (Lambertian shading, no anti-aliasing, so every
pixel's colour and depth come from the one ray through its centre). The world is right-handed with ``y`` up; the
ground is the plane ``y = ground.height``.

Camera: a pinhole at ``position`` looking at ``look_at``, vertical field of view ``fov_degrees``. The ray of pixel
``(row, col)`` passes through ``(col + 0.5, row + 0.5)`` of the image plane. Rays are written
``origin + t * direction`` with ``direction = forward + x * right + y * up`` (forward component 1), so the hit
parameter ``t`` *is* the depth: the distance along the camera axis (z-depth), not along the ray.

Depth images (``depth_to_image``): linear in depth, normalised per image between the nearest hit (255, white) and
the farthest hit (``FAR_LEVEL``, dark grey), background (no hit) black; 8-bit grey stored as RGB.

    scene = sample_scene(np.random.default_rng(0))
    camera = sample_camera(np.random.default_rng(1), scene)
    rgb, depth = render(scene, camera, 256, 256)  # uint8 [H, W, 3], float32 [H, W] (inf: no hit)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from pipelines.synth import captions

Vector = tuple[float, float, float]
RGB = tuple[int, int, int]
EPSILON = 1e-6
FAR_LEVEL = 24  # grey level of the farthest hit in a depth image, so that it stays apart from the black background
# Object colours: named palette colours that shade well (white and black lose their shape under Lambertian light).
OBJECT_COLORS: tuple[captions.Color, ...] = tuple(
    color for color in captions.PALETTE if color.en not in ("white", "black", "navy blue", "cream", "dark green")
)
GROUND_COLORS: tuple[captions.Color, ...] = tuple(
    color for color in captions.PALETTE if color.en in ("light grey", "cream", "light green", "light blue", "white")
)


@dataclasses.dataclass(frozen=True)
class Sphere:
    center: Vector
    radius: float
    color: RGB
    name: str = "sphere"


@dataclasses.dataclass(frozen=True)
class Box:
    """A box between ``minimum`` and ``maximum`` corners, turned by ``yaw_degrees`` about the vertical axis
    through its centre (0: axis-aligned)."""

    minimum: Vector
    maximum: Vector
    color: RGB
    yaw_degrees: float = 0.0
    name: str = "box"

    @property
    def center(self) -> np.ndarray:
        return (np.asarray(self.minimum, np.float64) + np.asarray(self.maximum, np.float64)) / 2


@dataclasses.dataclass(frozen=True)
class Ground:
    """The square ``|x - cx|, |z - cz| <= half_size`` of the plane ``y = height``; a checker of ``checker`` units
    (0: plain) alternates ``color`` and ``checker_color``."""

    height: float = 0.0
    half_size: float = 10.0
    center: tuple[float, float] = (0.0, 0.0)
    color: RGB = (214, 214, 212)
    checker_color: RGB = (190, 190, 188)
    checker: float = 1.0


@dataclasses.dataclass(frozen=True)
class Light:
    """``direction`` points from the scene towards the light; shading is ``ambient + intensity * max(0, n.l)``."""

    direction: Vector = (0.4, 1.0, 0.3)
    intensity: float = 0.8
    ambient: float = 0.25
    shadows: bool = True


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[Sphere | Box, ...]
    ground: Ground | None = Ground()
    light: Light = Light()
    sky_top: RGB = (170, 200, 235)  # background (no hit), a vertical gradient in the image
    sky_bottom: RGB = (235, 240, 248)

    @property
    def center(self) -> np.ndarray:
        """The middle of the objects' centres (the point novel views orbit)."""
        centers = [obj.center for obj in self.objects]
        return np.mean(np.asarray(centers, np.float64), axis=0) if centers else np.zeros(3)


@dataclasses.dataclass(frozen=True)
class Camera:
    position: Vector
    look_at: Vector
    fov_degrees: float = 50.0  # vertical
    up: Vector = (0.0, 1.0, 0.0)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit ``(forward, right, up)`` vectors of the camera."""
        forward = np.asarray(self.look_at, np.float64) - np.asarray(self.position, np.float64)
        norm = np.linalg.norm(forward)
        if norm < EPSILON:
            raise ValueError(f"camera position {self.position} and look_at {self.look_at} coincide")
        forward /= norm
        right = np.cross(forward, np.asarray(self.up, np.float64))
        if np.linalg.norm(right) < EPSILON:
            raise ValueError(f"camera looks along its up vector {self.up}: choose another up or look_at")
        right /= np.linalg.norm(right)
        return forward, right, np.cross(right, forward)

    def rays(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """``origin [3]`` and ``directions [H, W, 3]`` with a forward component of 1 (``t`` is z-depth)."""
        forward, right, up = self.axes()
        half = math.tan(math.radians(self.fov_degrees) / 2)
        xs = ((np.arange(width) + 0.5) / width * 2 - 1) * half * width / height
        ys = (1 - (np.arange(height) + 0.5) / height * 2) * half
        directions = forward + xs[None, :, None] * right + ys[:, None, None] * up
        return np.asarray(self.position, np.float64), directions

    def orbit(self, azimuth_degrees: float, elevation_degrees: float = 0.0) -> Camera:
        """The camera moved around ``look_at`` at the same distance, still looking at it: ``azimuth_degrees`` to
        its left (negative: right) about the vertical axis, then ``elevation_degrees`` up (negative: down)."""
        target = np.asarray(self.look_at, np.float64)
        offset = np.asarray(self.position, np.float64) - target
        world_up = np.asarray(self.up, np.float64) / np.linalg.norm(self.up)
        # Moving to the camera's left is a negative turn about the up axis (right-hand rule).
        offset = _rotate(offset, world_up, -math.radians(azimuth_degrees))
        if elevation_degrees:
            current = math.degrees(math.asin(np.clip(offset @ world_up / np.linalg.norm(offset), -1, 1)))
            if abs(current) >= 89.0 or abs(current + elevation_degrees) >= 89.0:
                raise ValueError(f"elevation {current + elevation_degrees:.1f} degrees would pass over the pole")
            right = np.cross(-offset, world_up)  # the camera's right; turning the offset about it by -angle lifts it
            offset = _rotate(offset, right / np.linalg.norm(right), -math.radians(elevation_degrees))
        return dataclasses.replace(self, position=tuple(float(v) for v in target + offset))


def _rotate(vector: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation of ``vector`` by ``angle`` radians about the unit ``axis`` (right-hand rule)."""
    cos, sin = math.cos(angle), math.sin(angle)
    return vector * cos + np.cross(axis, vector) * sin + axis * (axis @ vector) * (1 - cos)


def _yaw_matrix(degrees: float) -> np.ndarray:
    """Rotation about +y (local to world)."""
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[cos, 0.0, sin], [0.0, 1.0, 0.0], [-sin, 0.0, cos]])


def _dot(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise dot product of ``[N, 3]`` and ``[N, 3]`` or ``[3]`` arrays."""
    return first @ second if second.ndim == 1 else np.einsum("ij,ij->i", first, second)


def intersect_sphere(sphere: Sphere, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Hit parameter ``t [N]`` (inf: miss) of rays ``origins [3] or [N, 3]`` + t * ``directions [N, 3] or [3]``."""
    offset = origins - np.asarray(sphere.center, np.float64)
    if offset.ndim == 1:
        a, b, c = _dot(directions, directions), 2 * (directions @ offset), offset @ offset - sphere.radius**2
    else:
        a = _dot(directions, directions) if directions.ndim == 2 else directions @ directions
        b, c = 2 * _dot(offset, directions), _dot(offset, offset) - sphere.radius**2
    discriminant = b * b - 4 * a * c
    root = np.sqrt(np.maximum(discriminant, 0))
    near, far = (-b - root) / (2 * a), (-b + root) / (2 * a)
    t = np.where(near > EPSILON, near, np.where(far > EPSILON, far, np.inf))
    return np.where(discriminant >= 0, t, np.inf)


def intersect_box(box: Box, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Slab test in the box's own frame (a rotation keeps ``t``); ``t [N]``, inf on a miss."""
    rotation = _yaw_matrix(box.yaw_degrees)
    half = (np.asarray(box.maximum, np.float64) - np.asarray(box.minimum, np.float64)) / 2
    local_origins = (origins - box.center) @ rotation  # row vectors: v @ R is R^T v, world to local
    local_directions = directions @ rotation
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = 1.0 / local_directions
        first = (-half - local_origins) * inverse
        second = (half - local_origins) * inverse
    if np.any(local_directions == 0):  # a ray parallel to a slab is inside it for every t, or never
        parallel = np.broadcast_to(local_directions == 0, np.broadcast_shapes(first.shape, second.shape))
        inside = np.broadcast_to(np.abs(local_origins) <= half, parallel.shape)
        first = np.where(parallel, np.where(inside, -np.inf, np.inf), first)
        second = np.where(parallel, np.where(inside, np.inf, -np.inf), second)
    low, high = np.minimum(first, second), np.maximum(first, second)
    # Element-wise over the three columns: numpy reduces a length-3 last axis several times slower.
    enter = np.maximum(np.maximum(low[..., 0], low[..., 1]), low[..., 2])
    leave = np.minimum(np.minimum(high[..., 0], high[..., 1]), high[..., 2])
    return np.where((enter <= leave) & (leave > EPSILON), np.where(enter > EPSILON, enter, leave), np.inf)


def intersect_ground(ground: Ground, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``t [N]`` of rays meeting the ground square, inf elsewhere."""
    origins = np.broadcast_to(origins, directions.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (ground.height - origins[:, 1]) / directions[:, 1]
    t = np.where(np.isfinite(t) & (t > EPSILON), t, np.inf)
    reach = np.where(np.isfinite(t), t, 0)
    inside = (np.abs(origins[:, 0] + reach * directions[:, 0] - ground.center[0]) <= ground.half_size) & (
        np.abs(origins[:, 2] + reach * directions[:, 2] - ground.center[1]) <= ground.half_size
    )
    return np.where(inside, t, np.inf)


def _normals(surface: Sphere | Box | Ground, points: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Unit outward normals ``[N, 3]`` at ``points`` on ``surface`` (the ground's faces the camera ``origin``)."""
    if isinstance(surface, Sphere):
        return (points - np.asarray(surface.center, np.float64)) / surface.radius
    if isinstance(surface, Box):
        rotation = _yaw_matrix(surface.yaw_degrees)
        half = (np.asarray(surface.maximum, np.float64) - np.asarray(surface.minimum, np.float64)) / 2
        local = (points - surface.center) @ rotation / half  # each coordinate in [-1, 1]; the face is the +-1 one
        axis = np.abs(local).argmax(axis=1)
        normals = np.zeros_like(points)
        normals[np.arange(len(points)), axis] = np.sign(local[np.arange(len(points)), axis])
        return normals @ rotation.T
    normals = np.zeros_like(points)
    normals[:, 1] = 1.0 if origin[1] >= surface.height else -1.0
    return normals


def _intersect(surface: Sphere | Box | Ground, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    if isinstance(surface, Sphere):
        return intersect_sphere(surface, origins, directions)
    if isinstance(surface, Box):
        return intersect_box(surface, origins, directions)
    return intersect_ground(surface, origins, directions)


def _closest(
    surfaces: list[Sphere | Box | Ground], origins: np.ndarray, directions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The nearest ``t [N]`` over ``surfaces`` and the index of the surface hit ``[N]`` (-1: nothing)."""
    count = len(directions) if directions.ndim == 2 else len(origins)
    best_t, best_index = np.full(count, np.inf), np.full(count, -1)
    for index, surface in enumerate(surfaces):
        t = _intersect(surface, origins, directions)
        nearer = t < best_t
        best_t = np.where(nearer, t, best_t)
        best_index[nearer] = index
    return best_t, best_index


def render(scene: Scene, camera: Camera, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 ``[H, W, 3]`` and depth float32 ``[H, W]`` (z-distance along the camera axis; inf where no hit)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    origin, directions = camera.rays(width, height)
    directions = directions.reshape(-1, 3)
    surfaces: list[Sphere | Box | Ground] = [*scene.objects, *([scene.ground] if scene.ground is not None else [])]
    t, index = _closest(surfaces, origin, directions)
    hit = np.flatnonzero(index >= 0)
    points = origin + t[hit, None] * directions[hit]
    albedo, normals = np.zeros((len(hit), 3)), np.zeros((len(hit), 3))
    for number, surface in enumerate(surfaces):
        mine = index[hit] == number
        if not mine.any():
            continue
        normals[mine] = _normals(surface, points[mine], origin)
        if isinstance(surface, Ground):
            albedo[mine] = surface.color
            if surface.checker > 0:
                cells = np.floor((points[mine, 0] - surface.center[0]) / surface.checker) + np.floor(
                    (points[mine, 2] - surface.center[1]) / surface.checker
                )
                albedo[np.flatnonzero(mine)[cells % 2 == 1]] = surface.checker_color
        else:
            albedo[mine] = surface.color

    light = np.asarray(scene.light.direction, np.float64)
    light /= np.linalg.norm(light)
    lambert = np.clip(normals @ light, 0, None)
    if scene.light.shadows and scene.objects:
        # A shadow ray from just off the surface towards the light; only objects cast shadows.
        lit = np.flatnonzero(lambert > 0)
        occluder_t, _ = _closest(list(scene.objects), points[lit] + normals[lit] * 1e-4, light)
        lambert[lit[np.isfinite(occluder_t)]] = 0
    shade = scene.light.ambient + scene.light.intensity * lambert

    rows = np.linspace(0, 1, height)[:, None, None]
    sky = (1 - rows) * np.asarray(scene.sky_top, np.float64) + rows * np.asarray(scene.sky_bottom, np.float64)
    rgb = np.broadcast_to(sky, (height, width, 3)).reshape(-1, 3).copy()
    rgb[hit] = np.clip(albedo * shade[:, None], 0, 255)
    depth = np.full(width * height, np.inf, dtype=np.float32)
    depth[hit] = t[hit]
    return np.round(rgb).astype(np.uint8).reshape(height, width, 3), depth.reshape(height, width)


def depth_to_image(depth: np.ndarray) -> np.ndarray:
    """A depth map ``[H, W]`` as 8-bit grey RGB ``[H, W, 3]``: linear in depth, the nearest hit 255, the farthest
    ``FAR_LEVEL``, no hit (inf) 0. A map with one depth only is all 255 where hit."""
    finite = np.isfinite(depth)
    image = np.zeros(depth.shape, dtype=np.uint8)
    if finite.any():
        near, far = float(depth[finite].min()), float(depth[finite].max())
        scale = (255 - FAR_LEVEL) / (far - near) if far > near else 0.0
        levels = 255 - (depth[finite].astype(np.float64) - near) * scale
        image[finite] = np.clip(np.round(levels), FAR_LEVEL, 255).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2)


# Random scenes.
def _overlaps(position: np.ndarray, radius: float, placed: list[tuple[np.ndarray, float]], gap: float) -> bool:
    return any(np.linalg.norm(position - other) < radius + other_radius + gap for other, other_radius in placed)


def sample_scene(rng: np.random.Generator, num_objects: int | None = None) -> Scene:
    """2 to 5 spheres and boxes of named colours standing on a checkered ground square, apart from each other."""
    num_objects = num_objects or int(rng.integers(2, 6))
    objects: list[Sphere | Box] = []
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(num_objects * 20):  # rejection sampling of footprints that keep apart
        if len(objects) == num_objects:
            break
        color = OBJECT_COLORS[int(rng.integers(len(OBJECT_COLORS)))]
        position = rng.uniform(-2.2, 2.2, size=2)
        if rng.random() < 0.5:
            radius = float(rng.uniform(0.4, 1.0))
            footprint = radius
            obj: Sphere | Box = Sphere((position[0], radius, position[1]), radius, color.rgb, f"{color.en} sphere")
        else:
            size = rng.uniform(0.5, 1.6, size=3)
            if rng.random() < 0.5:
                size[:] = size[0]  # a cube
            low = (position[0] - size[0] / 2, 0.0, position[1] - size[2] / 2)
            high = (position[0] + size[0] / 2, float(size[1]), position[1] + size[2] / 2)
            yaw = float(rng.uniform(0, 90)) if rng.random() < 0.6 else 0.0
            footprint = float(np.hypot(size[0], size[2]) / 2)
            kind = "cube" if size[0] == size[1] == size[2] else "box"
            obj = Box(low, high, color.rgb, yaw, f"{color.en} {kind}")
        if not _overlaps(position, footprint, placed, gap=0.15):
            objects.append(obj)
            placed.append((position, footprint))
    ground_color = GROUND_COLORS[int(rng.integers(len(GROUND_COLORS)))].rgb
    darker = (round(ground_color[0] * 0.85), round(ground_color[1] * 0.85), round(ground_color[2] * 0.85))
    checker = float(rng.choice([0.0, 0.5, 1.0]))
    ground = Ground(0.0, 6.0, (0.0, 0.0), ground_color, darker, checker)
    azimuth = rng.uniform(0, 2 * math.pi)
    light = Light((math.cos(azimuth), float(rng.uniform(0.8, 2.0)), math.sin(azimuth)), 0.8, 0.25, True)
    return Scene(tuple(objects), ground, light)


def sample_camera(rng: np.random.Generator, scene: Scene) -> Camera:
    """A camera 6 to 8.5 units from the scene centre, 15 to 40 degrees above the ground, looking at the centre."""
    center = scene.center.copy()
    center[1] = 0.5
    distance = float(rng.uniform(6.0, 8.5))
    azimuth, elevation = rng.uniform(0, 2 * math.pi), math.radians(float(rng.uniform(15, 40)))
    offset = distance * np.array(
        [math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth)]
    )
    return Camera(tuple(float(v) for v in center + offset), tuple(float(v) for v in center), float(rng.uniform(40, 55)))
