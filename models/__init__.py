"""The neural side of fusion-search: open_clip dual encoder, fusion heads, synthetic world."""

from .encoder import DEFAULT_MODEL, RetrievalModel, load_model
from .errors import (
    BadImage,
    FusionUnavailable,
    HeadNotAvailable,
    ImageTooLarge,
    ModelError,
    ModelLoadError,
    UnsupportedImageType,
)
from .imaging import ALLOWED_FORMATS, DecodedImage, decode_image

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MODEL",
    "BadImage",
    "DecodedImage",
    "FusionUnavailable",
    "HeadNotAvailable",
    "ImageTooLarge",
    "ModelError",
    "ModelLoadError",
    "RetrievalModel",
    "UnsupportedImageType",
    "decode_image",
    "load_model",
]
