"""Where the encoders and the match head run: torch, ONNX Runtime or OpenVINO (``FUSION_RUNTIME``).

An :class:`Engine` runs the three exported graphs (``models.export``) on numpy arrays; the
``RetrievalModel`` hands it its preprocessed pixels, trimmed token ids and fusion batches, and
keeps everything else (tokenising, preprocessing, composition, explanations) in torch.

* ``onnxruntime``: ONNX Runtime's CPU provider, fp32 (its x86 kernels have no bf16 matmuls);
* ``openvino``: the OpenVINO CPU plugin, bf16 where the precision choice says so (the CPU has
  AVX-512 BF16 or AMX-BF16), fp32 otherwise, set explicitly: the plugin would otherwise pick
  bf16 on such CPUs by itself;
* ``auto``: a probe at first load times torch (at the precision it would serve) against each
  installed runtime on the same inputs, and runs each part (images, text, match) on the runtime
  that is at least :data:`MIN_SPEEDUP` times faster on it, among those whose embeddings keep a
  cosine of at least :data:`MIN_COSINE` to fp32 torch, on torch otherwise;
  ``models.runtime_probe`` decides and records why.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .errors import ModelLoadError

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
# what an engine may run: the image encoder, the text encoder and the fusion head's match
PARTS = ("images", "text", "match")
ENGINES = ("onnxruntime", "openvino")
INSTALL_HINT = "pip install 'fusion-search[runtimes]'"
MIN_SPEEDUP = 1.3
MIN_COSINE = 0.999


class Engine(Protocol):
    """The exported graphs on one runtime: numpy in, numpy out, safe to call from threads."""

    name: str
    precision: str

    def images(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) float32 -> normalised embeddings (N, D), patch tokens (N, T, W)."""
        ...

    def texts(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, L) int64 ids trimmed after the longest text -> tokens (N, L, W), embeddings."""
        ...

    @property
    def has_match(self) -> bool: ...

    def match(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Raw match logits (N,) from the fusion batch's arrays (``models.export.MatchGraph``)."""
        ...


def missing(runtime: str) -> str | None:
    """None when ``runtime``'s package imports, else why it does not."""
    if runtime == "torch":
        return None
    try:
        importlib.import_module(runtime)
    except ImportError as exc:
        return f"{runtime} is not installed ({INSTALL_HINT}): {exc}"
    return None


# A text tower with fewer multiply-adds per token than this runs its graph on one thread: one
# query through fusion-tiny's (0.8M per token) is mostly per-operator overhead, which a pool to
# wake adds to (ONNX Runtime, 2-core AMD EPYC: 0.94 ms on one thread, 1.26 ms on two, and 4
# clients' searches 178 -> 194/s); ViT-B-32's (38M) still halves on two threads (23 -> 17 ms).
SMALL_TEXT_MACS = 4_000_000


def text_threads(macs_per_token: int, threads: int) -> int:
    """Threads for the text graph of a tower doing ``macs_per_token`` per token."""
    return 1 if 0 < macs_per_token < SMALL_TEXT_MACS else threads


class _Threads:
    """Threads per graph: ``text`` for the text graph, ``threads`` for the others."""

    def __init__(self, threads: int, text: int) -> None:
        self.threads, self.text = threads, text

    def __call__(self, graph: str) -> int:
        return self.text if graph == "text" else self.threads


class OrtEngine:
    """ONNX Runtime's CPU provider; ``InferenceSession.run`` is thread-safe.

    Idle pool threads sleep instead of spinning (``session.intra_op.allow_spinning`` 0): on a
    server answering requests side by side, a spinning pool takes the cores the other requests
    need (on 2 cores, 4 clients: 127 -> 178 searches/s, 14.4 -> 7.5 ms of CPU per search).
    """

    name = "onnxruntime"

    def __init__(self, graphs: Mapping[str, Path], threads: _Threads) -> None:
        import onnxruntime as ort

        def options(n: int) -> ort.SessionOptions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = n
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return opts

        self.precision = "int8" if any("int8" in str(p) for p in graphs.values()) else "fp32"
        self._s = {g: ort.InferenceSession(str(p), options(threads(g)),
                                           providers=["CPUExecutionProvider"])
                   for g, p in graphs.items()}

    @property
    def has_match(self) -> bool:
        return "match" in self._s

    def images(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb, tok = self._s["image"].run(None, {"pixels": pixels})
        return emb, tok

    def texts(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tok, emb = self._s["text"].run(None, {"ids": ids})
        return tok, emb

    def match(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._s["match"].run(None, dict(feeds))[0])


class OpenVinoEngine:
    """The OpenVINO CPU plugin; one infer request per thread and graph (requests are not
    thread-safe, compiled models are)."""

    name = "openvino"

    def __init__(self, graphs: Mapping[str, Path], threads: _Threads, precision: str) -> None:
        import openvino as ov

        core = ov.Core()

        def config(n: int) -> dict[str, Any]:
            return {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                    "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": n}

        self.precision = precision
        self._c = {g: core.compile_model(str(p), "CPU", config(threads(g)))
                   for g, p in graphs.items()}
        self._local = threading.local()

    @property
    def has_match(self) -> bool:
        return "match" in self._c

    def _run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        requests = self._local.__dict__.setdefault("requests", {})
        req = requests.get(graph)
        if req is None:
            req = requests[graph] = self._c[graph].create_infer_request()
        res = req.infer(dict(feeds))
        # copies: the request reuses its output buffers on the next call
        return [np.array(res[o]) for o in self._c[graph].outputs]

    def images(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb, tok = self._run("image", {"pixels": pixels})
        return emb, tok

    def texts(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tok, emb = self._run("text", {"ids": ids})
        return tok, emb

    def match(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._run("match", feeds)[0]


def build_engine(runtime: str, graphs: Mapping[str, Path], precision: str = "fp32",
                 threads: int | None = None, text_macs: int = 0) -> Engine:
    """An engine over exported graphs. ``precision`` is fp32 or bf16 (bf16: OpenVINO only);
    ``text_macs``: the text tower's multiply-adds per token (``RetrievalModel.text_macs``),
    which decides the text graph's threads (:func:`text_threads`; 0: unknown, all threads).

    Raises:
        ModelLoadError: an unknown runtime, a runtime that is not installed, or graphs it
            cannot load.
    """
    why = missing(runtime)
    if why:
        raise ModelLoadError(f"FUSION_RUNTIME={runtime}: {why}")
    n = threads or torch.get_num_threads()
    per_graph = _Threads(n, text_threads(text_macs, n))
    try:
        if runtime == "onnxruntime":
            return OrtEngine(graphs, per_graph)
        if runtime == "openvino":
            return OpenVinoEngine(graphs, per_graph, precision)
    except Exception as exc:  # each runtime raises its own kinds for a graph it cannot load
        raise ModelLoadError(f"{runtime} could not load the exported graphs: {exc}") from exc
    raise ModelLoadError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")


def engine_precision(runtime: str, dtype: torch.dtype) -> tuple[str, str]:
    """The precision an engine runs in for the precision choice's dtype, and why."""
    if dtype != torch.bfloat16:
        return "fp32", "fp32"
    if runtime == "openvino":
        return "bf16", "bf16 (OpenVINO's inference precision hint)"
    return "fp32", "fp32: ONNX Runtime's CPU kernels have no bf16 matmuls on this CPU"


def texts_feed(ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids trimmed after the longest text's end-of-text token, the end-of-text indices
    and the padding mask (True after each text's end), as the text graph and the torch path
    read them."""
    eot = ids.argmax(dim=-1)
    length = int(eot.max()) + 1
    pad = torch.arange(length)[None, :] > eot[:, None]
    return (np.ascontiguousarray(ids[:, :length].numpy().astype(np.int64)), eot.numpy(),
            pad.numpy())


def as_tensors(*arrays: Any) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
