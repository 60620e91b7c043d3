"""The model contract: one open_clip dual encoder plus optional fusion heads.

``load_model()`` builds a :class:`RetrievalModel` (``models.retrieval``) from a name, the bundled
weights and configs registered here; the precision choice lives in ``models.precision``, the
text tower's fast path in ``models.text_tower``, the re-rank blend in ``models.rerank``.
Nothing here imports FastAPI or the index.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import open_clip
import torch
from safetensors.torch import load_file

from .answer_heads import AskHeads, CaptionDecoder
from .ask import bundled_answer_heads, load_ask, load_describe
from .device import resolve_device
from .errors import ModelLoadError
from .fusion import FusionConfig, FusionHeads
from .precision import choose_precision, native_bf16, precision_name, quicker_text_dtype
from .rerank import RERANK_COS, RERANK_MATCH, rerank_scores
from .retrieval import FUSION_KIND, RetrievalModel
from .text_tower import TextBatch
from .towers import visual_forward

# re-exported: importers of ``models.encoder`` keep working across the split
__all__ = [
    "DEFAULT_MODEL",
    "FUSION_KIND",
    "RERANK_COS",
    "RERANK_MATCH",
    "WEIGHTS_DIR",
    "RetrievalModel",
    "TextBatch",
    "bundled_paths",
    "load_model",
    "native_bf16",
    "register_configs",
    "rerank_scores",
    "visual_forward",
]

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"
WEIGHTS_DIR = PACKAGE_DIR / "weights"
DEFAULT_MODEL = "fusion-tiny"

_registered = False
_register_lock = threading.Lock()


LOCAL_DIR = "local-dir:"  # open_clip: config and weights from a folder


def register_configs() -> None:
    """Register the bundled architecture JSON files with open_clip (idempotent)."""
    global _registered
    with _register_lock:
        if not _registered:
            open_clip.add_model_config(CONFIG_DIR)
            _registered = True


def bundled_paths(name: str) -> tuple[Path, Path, Path]:
    """(backbone weights, fusion weights, fusion config) bundled for ``name``."""
    return (
        WEIGHTS_DIR / f"{name}.safetensors",
        WEIGHTS_DIR / f"{name}.fusion.safetensors",
        WEIGHTS_DIR / f"{name}.fusion.json",
    )


def _local_dir_has_weights(name: str) -> bool:
    """Whether ``name`` is open_clip's ``local-dir:<folder>`` with a checkpoint in the folder."""
    if not name.startswith(LOCAL_DIR):
        return False
    folder = Path(name[len(LOCAL_DIR):])
    return any(any(folder.glob(f"*{ext}")) for ext in (".safetensors", ".bin", ".pth"))


def _load_fusion(path: Path, cfg_path: Path) -> FusionHeads:
    try:
        meta = json.loads(cfg_path.read_text())
        cfg = FusionConfig(**meta["config"])
        heads = FusionHeads(cfg, tuple(meta.get("kinds", ["attention"])))
        heads.load_state_dict(load_file(str(path)), strict=True)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load fusion weights {path}: {exc}") from exc
    heads.composes = bool(meta.get("compose", True))
    calibration = meta.get("calibration", {})
    heads.temperature = float(calibration.get("temperature", 1.0))
    heads.match_bias = float(calibration.get("bias", 0.0))
    return heads.float()


def _answer_heads(name: str, pretrained: str | None, backbone: Path, ask: str | None,
                  describe: str | None) -> tuple[AskHeads | None, CaptionDecoder | None]:
    """The ask and describe heads to serve: the files given, else the bundled ones when the
    bundled backbone is in use."""
    bundled = (bundled_answer_heads(WEIGHTS_DIR, name, backbone) if pretrained == str(backbone)
               else (None, None))
    return (load_ask(Path(ask)) if ask else bundled[0],
            load_describe(Path(describe)) if describe else bundled[1])


def load_model(
    name: str = DEFAULT_MODEL,
    pretrained: str | None = None,
    *,
    fusion: str | None = None,
    precision: str = "auto",
    device: str = "cpu",
    batch_size: int = 64,
    image_size: int | None = None,
    runtime: str = "torch",
    cache_dir: Path | None = None,
    ask: str | None = None,
    describe: str | None = None,
) -> RetrievalModel:
    """Load an open_clip model by name with optional weights and fusion heads.

    ``name`` is an open_clip model name, or ``local-dir:<folder>`` for a folder holding an
    ``open_clip_config.json`` and its checkpoint (open_clip's own schema; ``pretrained`` is then
    ignored).  ``pretrained`` is an open_clip tag or a checkpoint file; for a bundled config
    (``fusion-tiny``) the bundled weights are used when it is None.  ``fusion`` is a fusion-head
    safetensors file (its JSON config beside it, same stem); the bundled one is used when
    present.  ViT and CNN image towers both work (``models.towers``).  ``image_size`` overrides
    the config's input size (open_clip's ``force_image_size``; weights must have been trained at
    that size).
    ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``models.device``); outputs are
    numpy arrays on the CPU whatever the device. ``runtime`` is ``torch``, ``onnxruntime``,
    ``openvino`` or ``auto`` (``models.runtime_probe``); a runtime other than torch runs graphs
    exported from the fp32 weights and cached under ``cache_dir`` (default
    ``models.export.default_cache_dir()``), and ``info()`` says which runtime runs and why.

    Raises:
        ModelLoadError: unknown model name, unreadable weights, or a tag that needs a download.
        DeviceError: (a ModelLoadError) a malformed device or a GPU this machine lacks.
        ModelLoadError: also for a runtime that is not installed or cannot run this model
            (``auto`` falls back to torch instead, and says why).

    ``ask`` and ``describe`` are question-answering and caption-decoder safetensors files
    (``models.ask``); without them the bundled ones are used with the bundled backbone they
    were trained on.
    """
    device = resolve_device(device)
    register_configs()
    backbone, bundled_fusion, bundled_fusion_cfg = bundled_paths(name)
    if pretrained is None and backbone.is_file():
        pretrained = str(backbone)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # without weights, the same random model in every process
            clip = open_clip.create_model(name, pretrained=pretrained, device=device,
                                          force_image_size=image_size)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # open_clip raises many types for unknown names and bad files
        raise ModelLoadError(f"could not load model {name!r} (pretrained={pretrained}): {exc}") \
            from exc
    heads = None
    if fusion is not None:
        fpath = Path(fusion)
        heads = _load_fusion(fpath, fpath.with_name(fpath.name.replace(".safetensors", ".json")))
    elif bundled_fusion.is_file() and pretrained == str(backbone):
        try:
            heads = _load_fusion(bundled_fusion, bundled_fusion_cfg)
        except ModelLoadError as exc:  # serve with late fusion rather than not at all
            log.error("bundled fusion heads unusable, falling back to late fusion: %s", exc)
    dtype, why = choose_precision(precision, device)
    text_dtype = dtype
    if precision == "auto" and dtype != torch.float32 and device == "cpu":
        text_dtype = quicker_text_dtype(clip, dtype)
        if text_dtype != dtype:
            why += "; the text tower stays fp32, faster for one short query at this width"
    answer_heads = _answer_heads(name, pretrained, backbone, ask, describe)

    # open_clip's ``local-dir:`` names carry their weights in the folder, not in ``pretrained``
    trained = pretrained is not None or _local_dir_has_weights(name)

    def build(dt: torch.dtype, text_dt: torch.dtype) -> RetrievalModel:
        model = RetrievalModel(
            name, clip, tokenizer, trained=trained, fusion=heads, dtype=dt,
            text_dtype=text_dt, device=device, batch_size=batch_size, precision_reason=why,
        )
        model.attach_answer_heads(*answer_heads)
        return model

    if runtime == "torch":
        model = build(dtype, text_dtype)
        model.use_engine(None, "torch as set")
        return model
    from .runtime_probe import select_runtime

    # the graphs are exported from the fp32 weights; torch is cast afterwards if it serves
    model = build(torch.float32, torch.float32)
    engines, reason = select_runtime(model, runtime, dtype, text_dtype, cache_dir)
    on_torch = set(model.parts) - set(engines)
    if on_torch and (dtype, text_dtype) != (torch.float32, torch.float32):
        model = build(dtype, text_dtype)  # the parts torch keeps run at the chosen precision
    for engine in {id(e): e for e in engines.values()}.values():
        if engine.precision != precision_name(dtype):
            model.precision_reason += f"; {engine.name} runs {engine.precision}"
    model.use_engines(engines, reason)
    return model
