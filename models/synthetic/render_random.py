"""Domain randomisation of the training renderer: geometry, scale, placement, style, background.

The training renderer (:mod:`.render`) draws one canonical polygon per shape, flat-filled, at two
narrow scales, on a plain background, with small rotations. A model trained only on that learns
the renderer. This module draws the *same scene graphs* with everything that a caption does not
fix left free, so that what stays constant is exactly what captions talk about:

- geometry per shape: ellipses of varied aspect, squares with rounded corners and uneven sides,
  triangles with jittered corners, stars of varied depth, crosses of varied arm width and length;
- any rotation; object scales drawn wider than the training classes (a gap stays between
  "small" and "large");
- free placement: centres anywhere that fits, the pair's relation kept by the dominant axis of
  their offset, with a margin so it is never ambiguous;
- styles: flat, shaded (a brightness ramp across the object), outlined, stroke only;
- colours re-drawn around each name in HSV, wide enough to vary, narrow enough to keep the name;
- backgrounds: flat, linear gradient, vignette, stripes, checks or blotches in the named colour.

Written for training only: it shares no code or parameters with the OOD renderer
(:mod:`.ood_render`), so the OOD evaluation stays a test of what this randomisation buys.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw

from .render import BACKGROUND_RGB, COLOR_RGB
from .sampling import _R_FACTOR
from .world import Obj, Scene

#: Object width (the training renderer's unit) per size class, randomised: wider than training's
#: (0.16-0.22 and 0.30-0.38) on both sides, still apart.
RANDOM_SCALE: dict[str, tuple[float, float]] = {"small": (0.11, 0.245), "large": (0.28, 0.46)}
_SS = 4  # supersampling
_PAD = 0.01
_RELATION_MARGIN = 1.35  # the dominant axis of a pair's offset is at least this times the other
STYLES = ("flat", "shaded", "outlined", "stroke")
_STYLE_P = (0.4, 0.25, 0.2, 0.15)
BACKGROUND_STYLES = ("flat", "gradient", "vignette", "stripes", "checks", "blotches")
_BG_P = (0.3, 0.2, 0.1, 0.15, 0.1, 0.15)


# ------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------


def _radius(scale: float) -> float:
    return _R_FACTOR * scale


def _fits(o: Obj, r: float) -> bool:
    return r + _PAD <= o.x <= 1 - r - _PAD and r + _PAD <= o.y <= 1 - r - _PAD


def _pair_holds(a: Obj, ra: float, b: Obj, rb: float, relation: str) -> bool:
    dx, dy = a.x - b.x, a.y - b.y
    if math.hypot(dx, dy) < ra + rb + 0.02:
        return False
    horizontal = relation in ("left of", "right of")
    dom, other = (abs(dx), abs(dy)) if horizontal else (abs(dy), abs(dx))
    if dom < _RELATION_MARGIN * other:
        return False
    sign = dx if horizontal else dy
    return sign < 0 if relation in ("left of", "above") else sign > 0


def randomised_layout(scene: Scene, rng: np.random.Generator) -> tuple[Scene, list[float]]:
    """The same scene graph (objects, relation, background) with new scales and free centres.

    Returns the scene with its new centres and each object's scale (width as a fraction of the
    image). Where no free placement is found for a large pair, the scales shrink toward their
    class's lower bound, and at worst the original centres and mid-class scales are kept.
    """
    scales = [float(rng.uniform(*RANDOM_SCALE[o.size])) for o in scene.objects]
    if len(scene.objects) == 1:
        o, r = scene.objects[0], _radius(scales[0])
        x, y = (float(rng.uniform(r + _PAD, 1 - r - _PAD)) for _ in range(2))
        return Scene(scene.background, (replace(o, x=x, y=y),)), scales
    relation = scene.relation
    assert relation is not None
    a, b = scene.objects
    for attempt in range(60):
        if attempt and attempt % 20 == 0:
            scales = [max(RANDOM_SCALE[o.size][0], s * 0.85)
                      for o, s in zip(scene.objects, scales, strict=True)]
        ra, rb = _radius(scales[0]), _radius(scales[1])
        na = replace(a, x=float(rng.uniform(ra + _PAD, 1 - ra - _PAD)),
                     y=float(rng.uniform(ra + _PAD, 1 - ra - _PAD)))
        nb = replace(b, x=float(rng.uniform(rb + _PAD, 1 - rb - _PAD)),
                     y=float(rng.uniform(rb + _PAD, 1 - rb - _PAD)))
        if _fits(na, ra) and _fits(nb, rb) and _pair_holds(na, ra, nb, rb, relation):
            return Scene(scene.background, (na, nb)), scales
    from .sampling import SCALE_RANGE

    return scene, [sum(SCALE_RANGE[o.size]) / 2 for o in scene.objects]


# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------


def _ring(n: int, radii: np.ndarray, start_deg: float) -> np.ndarray:
    t = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)


def shape_polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices of one random instance of ``shape`` at unit scale (fits a radius of ~0.62)."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        aspect = float(rng.uniform(0.82, 1.0))
        return np.stack([0.5 * np.cos(t), 0.5 * aspect * np.sin(t)], axis=1)
    if shape == "square":
        hw, hh = 0.43 * float(rng.uniform(0.88, 1.08)), 0.43 * float(rng.uniform(0.88, 1.08))
        rr = float(rng.uniform(0.0, 0.16)) * min(hw, hh) * 2
        pts: list[tuple[float, float]] = []
        for cx, cy, a0 in ((hw - rr, hh - rr, 0), (-hw + rr, hh - rr, 90),
                           (-hw + rr, -hh + rr, 180), (hw - rr, -hh + rr, 270)):
            for k in range(7):
                th = math.radians(a0 + 15 * k)
                pts.append((cx + rr * math.cos(th), cy + rr * math.sin(th)))
        return np.array(pts)
    if shape == "triangle":
        angles = np.array([-90.0, 30.0, 150.0]) + rng.uniform(-14, 14, 3)
        radii = _R_FACTOR * rng.uniform(0.82, 1.0, 3)
        t = np.deg2rad(angles)
        return np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)
    if shape == "star":
        inner = float(rng.uniform(0.18, 0.34))
        outer = _R_FACTOR * rng.uniform(0.9, 1.0, 5)
        radii = np.empty(10)
        radii[0::2], radii[1::2] = outer, inner
        return _ring(10, radii, -90.0)
    if shape == "cross":
        a, w = float(rng.uniform(0.42, 0.52)), float(rng.uniform(0.11, 0.24))
        p = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w)]
        p += [(w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
        return np.array(p, dtype=float)
    raise ValueError(f"unknown shape {shape!r}")


# ------------------------------------------------------------------------------------------
# Colour and background
# ------------------------------------------------------------------------------------------


def object_rgb(color: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A shade of the named colour, drawn in HSV around the training palette's value."""
    if color == "white":
        v, s = rng.uniform(0.86, 1.0), rng.uniform(0.0, 0.08)
        return _hsv(float(rng.uniform(0, 1)), float(s), float(v))
    if color == "black":
        return _hsv(float(rng.uniform(0, 1)), float(rng.uniform(0, 0.3)),
                    float(rng.uniform(0.02, 0.17)))
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in COLOR_RGB[color]))
    dh = 0.02 if color in ("red", "orange", "yellow") else 0.035
    h = (h + float(rng.uniform(-dh, dh))) % 1.0
    s = min(1.0, s * float(rng.uniform(0.72, 1.05)))
    v = min(1.0, v * float(rng.uniform(0.78, 1.06)))
    return _hsv(h, s, v)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """An (size, size, 3) float array: the named background in one of several styles."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in BACKGROUND_RGB[name]))
    base = np.array(colorsys.hsv_to_rgb(
        (h + float(rng.uniform(-0.02, 0.02))) % 1.0, min(1.0, s * float(rng.uniform(0.8, 1.1))),
        min(1.0, v * float(rng.uniform(0.85, 1.12))))) * 255
    style = BACKGROUND_STYLES[int(rng.choice(len(BACKGROUND_STYLES), p=_BG_P))]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    gain: np.ndarray = np.ones((size, size), np.float32)
    if style == "gradient":
        th = float(rng.uniform(0, 2 * np.pi))
        ramp = (xx - 0.5) * math.cos(th) + (yy - 0.5) * math.sin(th)
        gain = 1 + float(rng.uniform(0.15, 0.4)) * ramp
    elif style == "vignette":
        gain = 1 - float(rng.uniform(0.2, 0.45)) * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 2
    elif style in ("stripes", "checks"):
        period = float(rng.uniform(0.06, 0.2))
        th = float(rng.uniform(0, np.pi))
        u = ((xx * math.cos(th) + yy * math.sin(th)) / period) % 1.0 < 0.5
        if style == "checks":
            w = ((-xx * math.sin(th) + yy * math.cos(th)) / period) % 1.0 < 0.5
            u = u ^ w
        gain = 1 + float(rng.uniform(0.06, 0.16)) * np.where(u, 1.0, -1.0)
    elif style == "blotches":
        cells = int(rng.integers(3, 8))
        low = rng.normal(0, 1, (cells, cells)).astype(np.float32)
        up = np.asarray(Image.fromarray(low, "F").resize((size, size), Image.Resampling.BICUBIC))
        gain = 1 + float(rng.uniform(0.05, 0.12)) * up
    return np.clip(base[None, None, :] * gain[..., None], 0, 255)


# ------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------


def render_randomised(scene: Scene, scales: list[float], size: int,
                      rng: np.random.Generator) -> Image.Image:
    """Draw ``scene`` (centres as given, object widths ``scales``) in a random style."""
    big = size * _SS
    canvas = background(scene.background, big, rng)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big
    for obj, scale in zip(scene.objects, scales, strict=True):
        th = float(rng.uniform(0, 2 * np.pi))
        c, s = math.cos(th), math.sin(th)
        pts = (shape_polygon(obj.shape, rng) @ np.array([[c, s], [-s, c]])) * (scale * big)
        pts += np.array([obj.x * big, obj.y * big])
        poly = [(float(px), float(py)) for px, py in pts]
        style = STYLES[int(rng.choice(len(STYLES), p=_STYLE_P))]
        rgb = np.array(object_rgb(obj.color, rng), np.float32)
        mask_img = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask_img)
        line = max(1, round(float(rng.uniform(1.2, 2.8)) * _SS))
        if style == "stroke":
            draw.polygon(poly, outline=255, width=line)
        else:
            draw.polygon(poly, fill=255)
        mask = np.asarray(mask_img, np.float32)[..., None] / 255
        layer = np.broadcast_to(rgb, canvas.shape).astype(np.float32)
        if style == "shaded":
            phi = float(rng.uniform(0, 2 * np.pi))
            ramp = ((xx - obj.x) * math.cos(phi) + (yy - obj.y) * math.sin(phi)) / max(scale, 1e-3)
            layer = np.clip(layer * (1 + float(rng.uniform(0.2, 0.45)) * ramp[..., None]), 0, 255)
        canvas = canvas * (1 - mask) + layer * mask
        if style == "outlined":
            edge_img = Image.new("L", (big, big), 0)
            ImageDraw.Draw(edge_img).polygon(poly, outline=255, width=line)
            edge = np.asarray(edge_img, np.float32)[..., None] / 255
            shade = float(rng.choice([0.45, 0.6, 1.35]))
            canvas = canvas * (1 - edge) + np.clip(rgb * shade, 0, 255) * edge
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    return img.resize((size, size), Image.Resampling.BOX)


def randomised_example(scene: Scene, size: int, layout_rng: np.random.Generator,
                       draw_rng: np.random.Generator) -> tuple[Image.Image, Scene]:
    """``scene`` re-laid out (``layout_rng``) and drawn in a random style (``draw_rng``)."""
    placed, scales = randomised_layout(scene, layout_rng)
    return render_randomised(placed, scales, size, draw_rng), placed
