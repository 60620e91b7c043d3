"""Domain errors raised by the neural side; app/errors.py maps them to HTTP."""

from __future__ import annotations


class ModelError(Exception):
    """Base class for model errors."""


class ModelLoadError(ModelError):
    """The model or its weights could not be loaded (unknown name, missing or bad file)."""


class BadImage(ModelError):
    """An uploaded file is not an image we accept (undecodable, truncated, not allowed)."""

    def __init__(self, message: str, *, code: str = "bad_image", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class UnsupportedImageType(BadImage):
    """A decodable file whose format is outside the allow-list."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unsupported_media_type", status=415)


class ImageTooLarge(BadImage):
    """Pixel count over the limit (decompression bomb guard)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="image_too_large", status=413)


class FusionUnavailable(ModelError):
    """The loaded model has no attention-fusion weights for this operation."""


TRAIN_ANSWER_HEADS = "fusion-search train --only ask,describe"


class HeadNotAvailable(ModelError):
    """The loaded model has no question-answering (``ask``) or captioning (``describe``) head.

    Its message names the missing head and the command that trains it.
    """

    def __init__(self, head: str) -> None:
        what = {"ask": "question-answering", "describe": "captioning"}.get(head, head)
        super().__init__(
            f"this model has no {what} head ({head}); train one on its backbone with "
            f"`{TRAIN_ANSWER_HEADS}` (add --backbone/--pretrained for another backbone)")
        self.head = head
