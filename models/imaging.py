"""The one place that opens image bytes: allow-list, pixel limit, full decode, RGB."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import BadImage, ImageTooLarge, UnsupportedImageType

# Pillow format name -> (content type, file extension)
ALLOWED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "GIF": ("image/gif", "gif"),
    "WEBP": ("image/webp", "webp"),
    "BMP": ("image/bmp", "bmp"),
    "TIFF": ("image/tiff", "tiff"),
}
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class DecodedImage:
    """An accepted image: RGB pixels plus what we store about the original file.

    ``width`` and ``height`` are the original's (EXIF orientation applied); ``image`` has that
    size too unless the decode was asked to reduce it (``decode_image(..., reduce_to=...)``).
    """

    image: Image.Image
    format: str
    content_type: str
    ext: str
    width: int
    height: int


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype("uint8")
        img = Image.fromarray(arr, mode="L")
    if img.mode == "F":
        img = img.convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


# EXIF orientations that turn the stored pixels a quarter turn (width and height swap)
_QUARTER_TURNS = {5, 6, 7, 8}


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    reduce_to: tuple[int, int] | None = None,
) -> DecodedImage:
    """Decode and fully load image bytes into an RGB image.

    Animated images give their first frame; EXIF orientation is applied.

    ``reduce_to`` (width, height), for a consumer that shrinks the image anyway (the encoder's
    resize): a JPEG may then be decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself, the
    smallest of those still at least ``reduce_to`` in both dimensions (after orientation), which
    is several times cheaper than a full decode plus resize. Other formats decode in full. The
    returned ``width``/``height`` stay the original's; every check runs on the original size.

    Raises:
        BadImage: empty, truncated or undecodable data.
        UnsupportedImageType: a real image in a format outside ALLOWED_FORMATS.
        ImageTooLarge: more than ``max_pixels`` pixels (decompression-bomb guard).
    """
    if not data:
        raise BadImage("the file is empty", code="empty_file")
    if reduce_to is not None and min(reduce_to) < 1:
        raise ValueError(f"reduce_to must be a positive size, got {reduce_to}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = (img.format or "").upper()
            if fmt not in ALLOWED_FORMATS:
                raise UnsupportedImageType(
                    f"image format {fmt or 'unknown'} is not accepted; "
                    f"allowed: {', '.join(sorted(ALLOWED_FORMATS))}"
                )
            width, height = img.size
            if width <= 0 or height <= 0:
                raise BadImage("the image has no pixels")
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"image is {width}x{height} pixels; the limit is {max_pixels} pixels"
                )
            img.seek(0)
            quarter_turn = False
            if reduce_to is not None and fmt == "JPEG":
                quarter_turn = img.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS
                rw, rh = reduce_to
                img.draft(img.mode, (rh, rw) if quarter_turn else (rw, rh))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            rgb = _to_rgb(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("the file is not a recognised image") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise BadImage(f"the image could not be decoded: {exc}") from exc
    except MemoryError as exc:
        raise ImageTooLarge("the image needs too much memory to decode") from exc
    content_type, ext = ALLOWED_FORMATS[fmt]
    if quarter_turn:
        width, height = height, width
    elif reduce_to is None or fmt != "JPEG":
        width, height = rgb.size
    return DecodedImage(rgb, fmt, content_type, ext, width, height)
