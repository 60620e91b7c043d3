"""Opt-in training augmentations: domain randomisation of rendered images, noisy captions.

On in the bundled recipe (``TrainConfig.randomise``, ``paraphrase``), after the geometric
randomisation of :mod:`.render_random`. Written for the training
side only: it uses nothing of the OOD renderer or of its held-out phrasings, so the OOD
evaluation stays a test of generalisation (its geometry, sentence forms and synonyms are never
seen). What it does share with the OOD set is generic corruption that any photo or typed query
has: blur, noise and JPEG on images, a swapped letter and capitals in captions; a model trained
with it should be reported with that said.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from .world import COLORS

_SIZE_WORDS = frozenset({"small", "little", "tiny", "large", "big"})
_COLOR_WORDS = frozenset(COLORS)


def randomise_image(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Photometric and resolution randomisation that keeps every claim true: colour balance,
    brightness and contrast, a lower-resolution round trip, blur, noise and JPEG, each with
    probability one half. Hues move little enough that colour names stay right."""
    out = img.convert("RGB")
    if rng.random() < 0.5:
        out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.75, 1.25)))
        out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.7, 1.3)))
        out = ImageEnhance.Color(out).enhance(float(rng.uniform(0.7, 1.3)))
    if rng.random() < 0.5:
        side = int(rng.integers(max(16, img.width // 3), img.width))
        out = out.resize((side, side), Image.Resampling.BILINEAR).resize(
            img.size, Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 1.0))))
    if rng.random() < 0.5:
        arr = np.asarray(out, np.float32) + rng.normal(0, float(rng.uniform(2, 12)),
                                                       (out.height, out.width, 3))
        out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=int(rng.integers(25, 90)))
        buf.seek(0)
        out = Image.open(buf).convert("RGB")
    return out


def noisy_caption(text: str, rng: np.random.Generator) -> str:
    """The same caption with surface noise: size and colour words in the other order, "is" and
    "there" or articles dropped, an upper-case first letter and a full stop, or two neighbouring
    letters of one long word swapped. Words are never replaced, so the claim is unchanged."""
    words = text.split(" ")
    if rng.random() < 0.3:  # "small red circle" -> "red small circle"
        for i in range(len(words) - 1):
            if words[i] in _SIZE_WORDS and words[i + 1] in _COLOR_WORDS:
                words[i], words[i + 1] = words[i + 1], words[i]
    if rng.random() < 0.2:
        words = [w for w in words if w not in ("is", "there")] or words
    if rng.random() < 0.4:
        words = [w for w in words if w not in ("a", "an")] or words
    if rng.random() < 0.3:
        long_ = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 6]
        if long_:
            i = long_[int(rng.integers(len(long_)))]
            w = words[i]
            j = int(rng.integers(1, len(w) - 2))
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    out = " ".join(words)
    if rng.random() < 0.3:
        out = out[:1].upper() + out[1:] + "."
    return out
