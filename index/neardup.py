"""Near-duplicate test of two pictures: the same image re-encoded, resized, slightly cropped or
brightened, told apart from a distinct picture of the same scene.

Neither the embedding (trained to see *what* is shown, so two renders of one scene are closer
than a JPEG copy of either) nor a 64-bit perceptual hash (blind to a small object on a plain
background, and moved by a crop) separates the two on measured data (docs/search-quality.md).
This compares pixels after aligning for the edits: each picture becomes small thumbnails of its
whole frame and of crops of it (up to 15% off each side, independently), each centred and
scaled to unit length, which cancels a brightness gain and compression noise; the similarity is
the best correlation of one picture's whole frame with any crop of the other, either way round.
Pure numpy and Pillow; the caller decodes the images.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

__all__ = ["DUPLICATE_THRESHOLD", "Signature", "signature", "similarity"]

#: Chosen on measured data (bench/quality_duplicates.py): precision and recall of "similarity
#: >= threshold" against distinct pictures of the same scene graph, in docs/search-quality.md.
DUPLICATE_THRESHOLD = 0.975

_BASE = 96  # side the picture is resampled to before cropping
_SIDE = 16  # thumbnail side
_SCALES = (1.0, 0.95, 0.9, 0.85)
_ANCHORS = (0.0, 0.5, 1.0)


def _boxes() -> list[tuple[int, int, int, int]]:
    boxes = [(0, 0, _BASE, _BASE)]
    for sx in _SCALES:
        for sy in _SCALES:
            if sx == sy == 1.0:
                continue
            w, h = _BASE * sx, _BASE * sy
            for fx in _ANCHORS:
                for fy in _ANCHORS:
                    x0, y0 = (_BASE - w) * fx, (_BASE - h) * fy
                    boxes.append((round(x0), round(y0), round(x0 + w), round(y0 + h)))
    return list(dict.fromkeys(boxes))


_BOX_LIST = _boxes()


def _grid(lo: int, hi: int) -> npt.NDArray[np.intp]:
    return np.round(np.linspace(lo, hi, _SIDE + 1)).astype(np.intp)


# Bin edges of every crop's thumbnail, for reading all thumbnails off one summed-area table.
_XS = np.stack([_grid(b[0], b[2]) for b in _BOX_LIST])  # (crops, SIDE + 1)
_YS = np.stack([_grid(b[1], b[3]) for b in _BOX_LIST])
_AREA = (np.diff(_YS)[:, :, None] * np.diff(_XS)[:, None, :]).reshape(-1, 1).astype(np.float32)
# Each thumbnail pixel is a box sum off the summed-area table: four corners, read in one take.
_STRIDE = _BASE + 1
_CORNERS = np.stack([
    (_YS[:, 1:, None] * _STRIDE + _XS[:, None, 1:]).reshape(-1),   # + bottom right
    (_YS[:, :-1, None] * _STRIDE + _XS[:, None, 1:]).reshape(-1),  # - top right
    (_YS[:, 1:, None] * _STRIDE + _XS[:, None, :-1]).reshape(-1),  # - bottom left
    (_YS[:, :-1, None] * _STRIDE + _XS[:, None, :-1]).reshape(-1),  # + top left
])


class Signature:
    """Unit-length thumbnails of a picture's whole frame (row 0) and of its crops."""

    def __init__(self, crops: npt.NDArray[np.float32]) -> None:
        self.crops = crops

    @property
    def whole(self) -> npt.NDArray[np.float32]:
        return self.crops[0]


def signature(image: Image.Image) -> Signature:
    """The signature of a decoded picture (any mode, any size)."""
    base = np.asarray(image.convert("RGB").resize((_BASE, _BASE), Image.Resampling.BOX))
    # float32 holds every sum exactly: integers up to 96 * 96 * 255 < 2**24
    sat = np.zeros((_STRIDE, _STRIDE, 3), np.float32)
    sat[1:, 1:] = base.cumsum(0, dtype=np.float32).cumsum(1)
    c = sat.reshape(-1, 3)[_CORNERS]  # (4, crops * SIDE * SIDE, 3)
    sums = c[0] - c[1] - c[2] + c[3]
    thumbs = (sums / _AREA).reshape(len(_BOX_LIST), -1, 3)
    thumbs -= thumbs.mean(1, keepdims=True)
    flat = thumbs.reshape(len(_BOX_LIST), -1)
    return Signature(flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-6))


def similarity(a: Signature, b: Signature) -> float:
    """Best aligned correlation of two pictures, in [-1, 1]; 1 for the same pixels."""
    return float(max((a.crops @ b.whole).max(), (b.crops @ a.whole).max()))
