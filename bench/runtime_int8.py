"""int8 copies of the exported graphs: ONNX Runtime static quantisation (QDQ, per-channel int8
weights, uint8 activations), calibrated on scenes and captions of the synthetic *train* split.

Only the matrix products are quantised (MatMul, Gemm, Conv); layer norms, softmax and GELU stay
in fp32, where int8 costs the most accuracy for the least time. The QDQ graph runs on both
ONNX Runtime and OpenVINO (which executes QDQ pairs as int8 kernels on VNNI/AMX CPUs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import synthetic as syn
from models.retrieval import RetrievalModel
from models.runtimes import texts_feed

CALIBRATION_SCENES = 64


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def calibration_feeds(model: RetrievalModel, n: int = CALIBRATION_SCENES, batch: int = 8
                      ) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs of each graph from ``n`` train scenes, computed by the fp32 torch model."""
    examples = syn.examples("train", n)
    feeds: dict[str, list[dict[str, np.ndarray]]] = {"image": [], "text": [], "match": []}
    for s in range(0, n, batch):
        part = examples[s : s + batch]
        pixels = model.preprocess([e.image for e in part])
        ids = model.tokenize([e.caption for e in part])
        trimmed, eot, pad = texts_feed(ids)
        feeds["image"].append({"pixels": pixels.numpy()})
        feeds["text"].append({"ids": trimmed})
        with torch.inference_mode():
            emb, tok = model._images_forward(pixels)
            tb = model._texts_forward(ids)
        # half the pairs matched, half shifted by one (mostly false): both kinds of logits
        for shift in (0, 1):
            order = np.roll(np.arange(len(part)), shift)
            feeds["match"].append({
                "image_tokens": tok.float().numpy()[order], "image_emb": emb.numpy()[order],
                "text_tokens": tb.tokens.float().numpy(), "text_mask": pad, "text_eot": eot,
                "text_emb": tb.emb.numpy()})
    return feeds


def quantize_graphs(graphs: dict[str, Path], model: RetrievalModel, out: Path,
                    scenes: int = CALIBRATION_SCENES) -> dict[str, Path]:
    """int8 QDQ copies of ``graphs`` in ``out`` (kept when already there), calibrated on
    ``scenes`` train scenes."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    out.mkdir(parents=True, exist_ok=True)
    result = {g: out / f"{g}.int8.onnx" for g in graphs}
    if all(p.is_file() for p in result.values()):
        return result
    feeds = calibration_feeds(model, scenes)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    for g, src in graphs.items():
        if result[g].is_file():
            continue
        tmp = result[g].with_suffix(".tmp")
        quantize_static(str(src), str(tmp), _Reader(feeds[g]),  # type: ignore[arg-type]
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                        extra_options={"ActivationSymmetric": False})
        tmp.replace(result[g])
    return result


def describe(scenes: int = CALIBRATION_SCENES) -> dict[str, Any]:
    return {"method": "onnxruntime.quantization.quantize_static, QDQ", "weights": "int8 per "
            "channel", "activations": "uint8 per tensor (MinMax)", "ops": "MatMul, Gemm, Conv",
            "calibration": f"{scenes} scenes and captions of the synthetic train "
                           "split"}
