"""The training renderer: flat-filled polygons on a plain background, drawn at 4x and reduced."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .sampling import _R_FACTOR, SCALE_RANGE
from .world import SHAPES, Scene

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (250, 230, 30),
    "green": (30, 175, 50),
    "blue": (40, 80, 235),
    "purple": (150, 40, 190),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}

BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "beige": (190, 170, 130),
    "teal": (0, 110, 120),
    "navy": (25, 35, 120),
}

#: Per-channel colour jitter (objects) and background jitter, in RGB units.
COLOR_JITTER = 12
BACKGROUND_JITTER = 6
MAX_ROTATION_DEG = 15.0

_SUPERSAMPLE = 4

# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices of ``shape`` for unit scale, centred at the origin (y down)."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([0.5 * np.cos(t), 0.5 * np.sin(t)], axis=1)
    if shape == "square":
        h = 0.43
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if shape == "triangle":
        t = np.deg2rad(np.array([-90.0, 30.0, 150.0]))
        return _R_FACTOR * np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "star":
        t = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, _R_FACTOR, 0.26)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if shape == "cross":
        a, w = 0.5, 0.17
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w)]
        pts += [(w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
        return np.array(pts, dtype=float)
    raise ValueError(f"unknown shape {shape!r}")


_POLYGONS: dict[str, np.ndarray] = {s: _unit_polygon(s) for s in SHAPES}


def _jitter_rgb(
    rgb: tuple[int, int, int], amount: int, rng: np.random.Generator | None
) -> tuple[int, int, int]:
    if rng is None or amount == 0:
        return rgb
    d = rng.integers(-amount, amount + 1, size=3)
    r, g, b = (int(min(255, max(0, c + int(dc)))) for c, dc in zip(rgb, d, strict=True))
    return (r, g, b)


def render(scene: Scene, size: int = 64, rng: np.random.Generator | None = None) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` x ``size`` pixels.

    With ``rng``, each object's scale within its size class, its rotation (+-15 degrees) and its
    colour shade (+-12 per channel) are jittered, and the background shade slightly; without it
    the rendering is canonical (mid-range scale, no rotation, exact colours). Drawn at 4x and
    box-filtered down for antialiasing.
    """
    big = size * _SUPERSAMPLE
    bg = _jitter_rgb(BACKGROUND_RGB[scene.background], BACKGROUND_JITTER, rng)
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        lo, hi = SCALE_RANGE[obj.size]
        if rng is None:
            scale, angle = (lo + hi) / 2, 0.0
        else:
            scale = float(rng.uniform(lo, hi))
            angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
        th = math.radians(angle)
        c, s = math.cos(th), math.sin(th)
        rot = np.array([[c, s], [-s, c]])
        pts = (_POLYGONS[obj.shape] @ rot) * (scale * big)
        pts += np.array([obj.x * big, obj.y * big])
        fill = _jitter_rgb(COLOR_RGB[obj.color], COLOR_JITTER, rng)
        draw.polygon([(float(px), float(py)) for px, py in pts], fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)
