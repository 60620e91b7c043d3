"""An out-of-distribution renderer, written apart from the training renderer's drawing code.

It shares only the vocabulary and the scene graphs of :mod:`.world`. Everything it draws is its
own: parametric geometry per shape (a true ellipse for a circle, a superellipse for a square,
irregular triangles, stars of varied depth, crosses of varied arm width), any rotation, a palette
sampled per colour name in HSV, flat / shaded / outlined / stroke-only objects, gradient,
vignetted or textured backgrounds, blur, sensor noise and JPEG artefacts, on canvases of other
sizes and aspect ratios. Positions and radii are fractions of the *visible square*: the centred
square of the canvas that a model's preprocessing (resize the shorter side, centre crop) keeps.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .world import BACKGROUNDS, COLORS, Scene

#: Bounding-circle *diameter* per size class, as a fraction of the visible square's side. The
#: training renderer's objects span about 0.20-0.27 (small) and 0.37-0.47 (large); these ranges
#: run across and beyond both, with a gap that keeps "small" and "large" readable.
OOD_DIAMETER: dict[str, tuple[float, float]] = {"small": (0.14, 0.29), "large": (0.34, 0.56)}

# HSV ranges per colour name: (hue degrees lo, hi), (saturation lo, hi), (value lo, hi).
_HSV = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
OBJECT_HSV: dict[str, _HSV] = {
    "red": ((-8, 6), (0.75, 1.0), (0.70, 0.95)),
    "orange": ((22, 34), (0.80, 1.0), (0.90, 1.0)),
    "yellow": ((50, 58), (0.75, 1.0), (0.90, 1.0)),
    "green": ((100, 140), (0.60, 0.95), (0.55, 0.85)),
    "blue": ((212, 228), (0.70, 0.95), (0.78, 1.0)),
    "purple": ((275, 295), (0.55, 0.85), (0.55, 0.85)),
    "white": ((0, 360), (0.0, 0.06), (0.93, 1.0)),
    "black": ((0, 360), (0.0, 0.20), (0.02, 0.14)),
}
BACKGROUND_HSV: dict[str, _HSV] = {
    "gray": ((0, 360), (0.0, 0.04), (0.42, 0.58)),
    "beige": ((35, 45), (0.25, 0.38), (0.70, 0.82)),
    "teal": ((180, 190), (0.85, 1.0), (0.40, 0.52)),
    "navy": ((228, 240), (0.65, 0.85), (0.38, 0.50)),
}
assert set(OBJECT_HSV) == set(COLORS) and set(BACKGROUND_HSV) == set(BACKGROUNDS)

#: Shorter canvas side in pixels and long/short aspect ratio. At the smallest canvas and
#: object, a shape is still about 7 pixels across: legible, if barely.
CANVAS_SIDE = (48, 160)
CANVAS_ASPECT = (1.0, 1.5)
_OVERSAMPLE = 3


@dataclass(frozen=True)
class Drawn:
    """A rendered OOD scene: the canvas, where its visible square lies, and each object's mask
    in the visible square (True where the object covers at least half a pixel)."""

    image: Image.Image
    crop: tuple[int, int, int, int]  # (left, top, right, bottom) of the visible square
    masks: tuple[np.ndarray, ...]


def _hsv_rgb(spec: _HSV, rng: np.random.Generator) -> tuple[float, float, float]:
    (h0, h1), (s0, s1), (v0, v1) = spec
    h = float(rng.uniform(h0, h1)) % 360.0
    r, g, b = colorsys.hsv_to_rgb(h / 360.0, float(rng.uniform(s0, s1)), float(rng.uniform(v0, v1)))
    return (255 * r, 255 * g, 255 * b)


def _shade(rgb: tuple[float, float, float], factor: float) -> tuple[int, int, int]:
    """Lighter (factor > 0, towards white) or darker (factor < 0, towards black)."""
    if factor >= 0:
        out = [c + (255 - c) * factor for c in rgb]
    else:
        out = [c * (1 + factor) for c in rgb]
    r, g, b = (int(round(min(255.0, max(0.0, c)))) for c in out)
    return (r, g, b)


# ---- geometry ---------------------------------------------------------------------------------


def _outline(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Outline points of ``shape`` around its area centroid, scaled so the farthest point is 1."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        ratio = float(rng.uniform(0.93, 1.0))  # hand-drawn circles are rarely exact
        pts = np.stack([np.cos(t), ratio * np.sin(t)], 1)
    elif shape == "square":
        n = float(rng.uniform(5.0, 14.0))  # superellipse |x|^n + |y|^n = 1: rounded corners
        t = np.linspace(0, 2 * np.pi, 128, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        pts = np.stack([np.sign(c) * np.abs(c) ** (2 / n), np.sign(s) * np.abs(s) ** (2 / n)], 1)
    elif shape == "triangle":
        ang = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-9, 9, 3))
        rad = rng.uniform(0.9, 1.0, 3)
        pts = np.stack([rad * np.cos(ang), -rad * np.sin(ang)], 1)
    elif shape == "star":
        inner = float(rng.uniform(0.36, 0.52))
        ang = np.deg2rad(90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        pts = np.stack([rad * np.cos(ang), -rad * np.sin(ang)], 1)
    elif shape == "cross":
        w = float(rng.uniform(0.22, 0.40))  # half the arm width, arms reach 1
        q = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1)]
        q += [(-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)]
        pts = np.array(q, dtype=float)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    pts = pts - _centroid(pts)
    return pts / np.max(np.hypot(pts[:, 0], pts[:, 1]))


def _centroid(pts: np.ndarray) -> np.ndarray:
    """Area centroid of a simple polygon (shoelace)."""
    x, y = pts[:, 0], pts[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    return np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)


# ---- backgrounds ------------------------------------------------------------------------------


def _background(name: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(_hsv_rgb(BACKGROUND_HSV[name], rng), np.float32)
    style = rng.choice(["flat", "gradient", "vignette", "texture"], p=[0.25, 0.35, 0.15, 0.25])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if style == "gradient":
        a = float(rng.uniform(0, 2 * np.pi))
        t = (xx * math.cos(a) + yy * math.sin(a)) / max(w, h)
        gain = 1 + float(rng.uniform(0.15, 0.35)) * (t - t.mean())
    elif style == "vignette":
        d = np.hypot(xx / w - 0.5, yy / h - 0.5)
        gain = 1.08 - float(rng.uniform(0.2, 0.45)) * d
    elif style == "texture":
        kind = rng.choice(["stripes", "checks", "blotches"])
        if kind == "stripes":
            period = float(rng.uniform(4, 12))
            a = float(rng.uniform(0, np.pi))
            gain = 1 + 0.07 * np.sign(np.sin((xx * math.cos(a) + yy * math.sin(a)) / period))
        elif kind == "checks":
            cell = int(rng.integers(4, 12))
            gain = 1 + 0.06 * (((xx // cell + yy // cell) % 2) * 2 - 1)
        else:
            coarse = rng.normal(0, 1, (h // 8 + 2, w // 8 + 2)).astype(np.float32)
            up = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
            gain = 1 + 0.06 * up
    else:
        gain = np.ones((h, w), np.float32)
    return np.clip(base[None, None, :] * gain[..., None], 0, 255)


# ---- objects ----------------------------------------------------------------------------------


def _draw_object(canvas: Image.Image, unit: np.ndarray, centre: np.ndarray, radius: float,
                 rgb: tuple[float, float, float], rng: np.random.Generator) -> Image.Image:
    """Draw one object (``unit``: its outline at radius 1) on ``canvas`` (RGB, oversampled) so
    that nothing, strokes included, reaches beyond ``radius`` from ``centre``; return its
    coverage mask (mode L)."""
    style = rng.choice(["flat", "shaded", "outlined", "stroke"], p=[0.35, 0.3, 0.23, 0.12])
    line = 0
    if style == "stroke":
        line = max(2, int(2 * radius * rng.uniform(0.12, 0.2)))
    elif style == "outlined":
        line = max(1, int(2 * radius * rng.uniform(0.04, 0.09)))
    pts = unit * (radius - line / 2) + centre  # a line is centred on the outline
    poly = [(float(x), float(y)) for x, y in pts]
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    if style == "stroke":  # outline only, a thick line in the object's colour
        ring = Image.new("L", canvas.size, 0)
        ImageDraw.Draw(ring).line(poly + [poly[0]], fill=255, width=line, joint="curve")
        canvas.paste(_shade(rgb, 0.0), mask=ring)
        return ring
    if style == "shaded":  # a linear light-to-dark ramp across the object
        x0, y0 = pts.min(0)
        a = float(rng.uniform(0, 2 * np.pi))
        w, h = canvas.size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = ((xx - x0) * math.cos(a) + (yy - y0) * math.sin(a)) / (2 * radius)
        amount = float(rng.uniform(0.15, 0.3))
        lo = np.array(_shade(rgb, -amount), np.float32)
        hi = np.array(_shade(rgb, amount), np.float32)
        tt = np.clip(t, 0, 1)[..., None]
        fill = Image.fromarray((lo * (1 - tt) + hi * tt).astype(np.uint8), "RGB")
        canvas.paste(fill, mask=mask)
    else:
        canvas.paste(_shade(rgb, 0.0), mask=mask)
    if style == "outlined":  # a darker (or, for black, lighter) rim
        edge = _shade(rgb, 0.5) if sum(rgb) < 120 else _shade(rgb, -0.55)
        ImageDraw.Draw(canvas).line(poly + [poly[0]], fill=edge, width=line, joint="curve")
        ImageDraw.Draw(mask).line(poly + [poly[0]], fill=255, width=line, joint="curve")
    return mask


# ---- degradations -----------------------------------------------------------------------------


def _degrade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    side = min(img.size)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0)) * side / 64))
    if rng.random() < 0.5:
        arr = np.asarray(img, np.float32) + rng.normal(0, float(rng.uniform(2, 10)),
                                                       (img.height, img.width, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(20, 86)))
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


# ---- the renderer -----------------------------------------------------------------------------


def draw(scene: Scene, radii: tuple[float, ...], rng: np.random.Generator,
         clean: bool = False) -> Drawn:
    """Draw ``scene``; object ``i`` has centre ``(x, y)`` and bounding radius ``radii[i]``, as
    fractions of the visible square. ``clean`` skips blur, noise and JPEG (for tests)."""
    if len(radii) != len(scene.objects):
        raise ValueError("one radius per object")
    short = int(rng.integers(CANVAS_SIDE[0], CANVAS_SIDE[1] + 1))
    long_ = int(round(short * float(rng.uniform(*CANVAS_ASPECT))))
    w, h = (long_, short) if rng.random() < 0.5 else (short, long_)
    left, top = (w - short) // 2, (h - short) // 2
    k = _OVERSAMPLE
    bg = _background(scene.background, w * k, h * k, rng)
    canvas = Image.fromarray(bg.astype(np.uint8), "RGB")
    masks = []
    for obj, r in zip(scene.objects, radii, strict=True):
        pts = _outline(obj.shape, rng)
        a = float(rng.uniform(0, 2 * np.pi)) if obj.shape != "circle" else 0.0
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        centre = np.array([left + obj.x * short, top + obj.y * short]) * k
        rgb = _hsv_rgb(OBJECT_HSV[obj.color], rng)
        m = _draw_object(canvas, pts @ rot.T, centre, r * short * k, rgb, rng)
        small = m.resize((w, h), Image.Resampling.BOX).crop((left, top, left + short,
                                                               top + short))
        masks.append(np.asarray(small) >= 128)
    img = canvas.resize((w, h), Image.Resampling.BOX)
    if not clean:
        img = _degrade(img, rng)
    return Drawn(img, (left, top, left + short, top + short), tuple(masks))


