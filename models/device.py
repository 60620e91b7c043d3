"""Which device the model runs on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against the
machine before anything is loaded, so that a wrong setting fails at start with one clear message."""

from __future__ import annotations

import re

from .errors import ModelLoadError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N (N the GPU's index)"
_FORMAT = re.compile(r"auto|cpu|cuda(?::(\d+))?")


class DeviceError(ModelLoadError):
    """The device setting is malformed or names a GPU this machine does not have."""


def resolve_device(spec: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` for a device setting; ``auto`` is ``cuda`` where torch
    sees a GPU and ``cpu`` otherwise.

    Raises:
        DeviceError: a value outside the choices, or a CUDA device that is not available.
    """
    value = spec.strip().lower()
    match = _FORMAT.fullmatch(value)
    if match is None:
        raise DeviceError(f"unknown device {spec!r}; use {DEVICE_CHOICES}")
    if value == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if value == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise DeviceError(
            f"device {spec!r} asks for a GPU, but CUDA is not available on this machine (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}, no GPU visible); "
            "use cpu, or auto to take a GPU only where there is one")
    index = match.group(1)
    if index is not None and int(index) >= torch.cuda.device_count():
        raise DeviceError(f"device {spec!r}: this machine has {torch.cuda.device_count()} "
                          f"GPU(s), numbered from 0")
    return value
