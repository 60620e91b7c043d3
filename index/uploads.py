"""What an upload is before it is stored: ``Upload``, tag cleaning, and its validation into the
catalog row it becomes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from index.catalog import NewItem
from index.files import file_name
from index.vectors import as_matrix

__all__ = ["Upload", "clean_tags", "new_row"]


@dataclass(frozen=True)
class Upload:
    """One image to store: its bytes, what the model made of it, and user metadata."""

    data: bytes
    sha256: str
    ext: str
    content_type: str
    embedding: npt.NDArray[np.float32]
    tokens: npt.NDArray[np.float16] | None = None
    width: int | None = None
    height: int | None = None
    original_name: str | None = None
    caption: str | None = None
    tags: Sequence[str] = field(default_factory=tuple)


def clean_tags(tags: Iterable[str] | None) -> list[str]:
    """Tags stripped of surrounding space, without empties or repeats, sorted.

    Raises TypeError for a tag that is not a string.
    """
    cleaned = set()
    for tag in tags or ():
        if not isinstance(tag, str):
            raise TypeError(f"tags must be strings, got {type(tag).__name__}")
        if tag.strip():
            cleaned.add(tag.strip())
    return sorted(cleaned)


def new_row(upload: Upload, dim: int) -> NewItem:
    """Validate an upload into the catalog row it becomes.

    Raises ValueError when sha256 is not the data's digest, ext is invalid or tokens are not
    (T, W); DimensionMismatch for an embedding of another dimension than ``dim``; TypeError for
    a tag that is not a string.
    """
    if hashlib.sha256(upload.data).hexdigest() != upload.sha256:
        raise ValueError("sha256 does not match the data")
    if upload.tokens is not None and np.ndim(upload.tokens) != 2:
        raise ValueError(f"tokens must be (T, W), got shape {np.shape(upload.tokens)}")
    return NewItem(
        sha256=upload.sha256,
        file=file_name(upload.sha256, upload.ext),
        content_type=upload.content_type,
        embedding=as_matrix(upload.embedding, dim)[0],
        original_name=upload.original_name,
        width=upload.width,
        height=upload.height,
        caption=upload.caption,
        tags=clean_tags(upload.tags),
        tokens=upload.tokens,
        bytes=len(upload.data),
    )
