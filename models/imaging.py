"""The one place that opens image bytes: allow-list, pixel limit, full decode, RGB."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

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
    """An accepted image: RGB pixels plus what we store about the original file."""

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
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode and fully load image bytes into an RGB image.

    Animated images give their first frame; EXIF orientation is applied.

    Raises:
        BadImage: empty, truncated or undecodable data.
        UnsupportedImageType: a real image in a format outside ALLOWED_FORMATS.
        ImageTooLarge: more than ``max_pixels`` pixels (decompression-bomb guard).
    """
    if not data:
        raise BadImage("the file is empty", code="empty_file")
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
            img.load()
            img = ImageOps.exif_transpose(img) or img
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
    return DecodedImage(rgb, fmt, content_type, ext, rgb.width, rgb.height)
