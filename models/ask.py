"""Asking a question about an image and describing it: the model side of ``/api/v1/ask`` and
``/api/v1/describe``.

:class:`AnswerHeadsMixin` gives :class:`~models.retrieval.RetrievalModel` ``has_ask``,
``has_describe``, ``ask(tokens, question)`` and ``describe(tokens)`` over one image's stored
patch tokens; the heads themselves are in :mod:`models.answer_heads`, loaded here from their
safetensors files and JSON configs (``<name>.ask.safetensors`` + ``<name>.ask.json``,
``<name>.describe.safetensors`` + ``<name>.describe.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .answer_heads import (
    SERVED_ASK,
    AskConfig,
    AskHeads,
    CaptionDecoder,
    DescribeConfig,
)
from .describe_grammar import decode_caption
from .errors import HeadNotAvailable, ModelLoadError
from .fusion import Batch

if TYPE_CHECKING:
    from .text_tower import TextBatch

log = logging.getLogger(__name__)


def answer_paths(weights_dir: Path, name: str) -> dict[str, Path]:
    """Where ``name``'s ask and describe heads (and their JSON configs) live in a folder."""
    return {
        "ask": weights_dir / f"{name}.ask.safetensors",
        "ask_config": weights_dir / f"{name}.ask.json",
        "describe": weights_dir / f"{name}.describe.safetensors",
        "describe_config": weights_dir / f"{name}.describe.json",
    }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _config_path(weights: Path) -> Path:
    return weights.with_name(weights.name.replace(".safetensors", ".json"))


def load_ask(path: Path) -> AskHeads:
    """The question-answering heads in ``path`` (config beside it).

    Raises:
        ModelLoadError: a missing or unreadable file, or weights that do not fit the config.
    """
    try:
        meta = json.loads(_config_path(path).read_text())
        heads = AskHeads(AskConfig(**meta["config"]), tuple(meta["answers"]),
                         tuple(meta.get("kinds", ["attention"])))
        heads.load_state_dict(load_file(str(path)), strict=True)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load question-answering heads {path}: {exc}") from exc
    heads.temperature = float(meta.get("calibration", {}).get("temperature", 1.0))
    return heads.float().eval()


def load_describe(path: Path) -> CaptionDecoder:
    """The caption decoder in ``path`` (config beside it).

    Raises:
        ModelLoadError: a missing or unreadable file, or weights that do not fit the config.
    """
    try:
        meta = json.loads(_config_path(path).read_text())
        dec = CaptionDecoder(DescribeConfig(**meta["config"]), tuple(meta["words"]))
        dec.load_state_dict(load_file(str(path)), strict=True)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load caption decoder {path}: {exc}") from exc
    return dec.float().eval()


def bundled_answer_heads(weights_dir: Path, name: str, backbone: Path
                         ) -> tuple[AskHeads | None, CaptionDecoder | None]:
    """The bundled heads for ``name`` that were trained on this very ``backbone`` file.

    Heads recorded against another backbone (say the encoder was retrained since) are left
    out with a warning: their answers would be noise, and 409 with the training command is
    the honest reply.
    """
    paths = answer_paths(weights_dir, name)
    out: list[Any] = []
    digest: str | None = None
    for kind, loader in (("ask", load_ask), ("describe", load_describe)):
        path = paths[kind]
        if not path.is_file():
            out.append(None)
            continue
        try:
            wanted = json.loads(paths[f"{kind}_config"].read_text()).get("backbone_sha256")
            digest = digest or file_sha256(backbone)
            if wanted and wanted != digest:
                log.warning("%s head %s was trained on another backbone; not loaded (train it "
                            "again: %s)", kind, path, "fusion-search train --only ask,describe")
                out.append(None)
                continue
            out.append(loader(path))
        except (OSError, ValueError, ModelLoadError) as exc:
            log.error("bundled %s head unusable: %s", kind, exc)
            out.append(None)
    return out[0], out[1]


def _grid(weights: np.ndarray) -> list[list[float]]:
    side = int(math.isqrt(len(weights)))
    w = weights / max(float(weights.sum()), 1e-12)
    grid = w.reshape(side, side) if side * side == len(w) else w[None, :]
    return [[float(v) for v in row] for row in grid]


class AnswerHeadsMixin:
    """``ask`` and ``describe`` for a model with a text tower and stored patch tokens."""

    ask_heads: AskHeads | None = None
    describe_head: CaptionDecoder | None = None

    if TYPE_CHECKING:
        device: torch.device
        embed_dim: int

        def tokenize(self, texts: Sequence[str]) -> torch.Tensor: ...

        def _texts_forward(self, ids: torch.Tensor) -> TextBatch: ...

    def attach_answer_heads(self, ask: AskHeads | None, describe: CaptionDecoder | None) -> None:
        """Serve these heads (None: none of that kind)."""
        self.ask_heads = ask.to(self.device).eval() if ask is not None else None
        self.describe_head = describe.to(self.device).eval() if describe is not None else None

    @property
    def has_ask(self) -> bool:
        return self.ask_heads is not None

    @property
    def has_describe(self) -> bool:
        return self.describe_head is not None

    def answer_info(self) -> dict[str, bool]:
        return {"has_ask": self.has_ask, "has_describe": self.has_describe}

    def question_batch(self, tokens: np.ndarray, questions: Sequence[str],
                       embeddings: np.ndarray | None = None) -> Batch:
        """Features of N images (tokens (N, T, W), optional pooled embeddings) with N questions
        for the heads."""
        tb = self._texts_forward(self.tokenize(list(questions)))
        emb = embeddings if embeddings is not None else np.zeros((len(tokens), self.embed_dim))
        return Batch(
            image_tokens=torch.from_numpy(np.asarray(tokens, np.float32)).to(self.device),
            image_emb=torch.from_numpy(np.asarray(emb, np.float32)).to(self.device),
            text_tokens=tb.tokens.float(), text_mask=tb.pad, text_eot=tb.eot,
            text_emb=tb.emb.float(),
        )

    @torch.inference_mode()
    def ask(self, tokens: np.ndarray, question: str) -> dict[str, Any]:
        """The answer to ``question`` about one image given its stored patch tokens (T, W).

        Returns ``{"answer", "probability" (calibrated), "alternatives" (the next three, each
        ``{"answer", "probability"}``), "grid" (the question's attention over the patches, rows
        of the patch grid, summing to 1)}``. A question with words the head never saw still
        gets an answer, with a low probability.

        Raises:
            HeadNotAvailable: the model has no question-answering head.
        """
        heads = self.ask_heads
        if heads is None:
            raise HeadNotAvailable("ask")
        b = self.question_batch(np.asarray(tokens)[None], [question])
        head = heads.heads[SERVED_ASK]
        logits, weights = head.attend(b)  # type: ignore[operator]
        probs = F.softmax(logits[0].float() / heads.temperature, dim=-1).cpu().numpy()
        order = np.argsort(-probs)[:4]
        ranked = [{"answer": heads.answers[i], "probability": float(probs[i])} for i in order]
        return {"answer": ranked[0]["answer"], "probability": ranked[0]["probability"],
                "alternatives": ranked[1:],
                "grid": _grid(weights[0].float().cpu().numpy().astype(np.float64))}

    @torch.inference_mode()
    def describe(self, tokens: np.ndarray) -> dict[str, Any]:
        """A caption of one image given its stored patch tokens (T, W), greedy, with its
        probability (the product of its words' probabilities).

        Raises:
            HeadNotAvailable: the model has no captioning head.
        """
        captions = self.describe_many(np.asarray(tokens)[None])
        return captions[0]

    @torch.inference_mode()
    def describe_many(self, tokens: np.ndarray) -> list[dict[str, Any]]:
        """Captions of N images' patch tokens (N, T, W), as :meth:`describe`.

        Raises:
            HeadNotAvailable: the model has no captioning head.
        """
        dec = self.describe_head
        if dec is None:
            raise HeadNotAvailable("describe")
        t = torch.from_numpy(np.asarray(tokens, np.float32)).to(self.device)
        ids, logp = dec.greedy(t)
        return [{"caption": decode_caption(row.tolist(), dec.words),
                 "probability": float(math.exp(lp))}
                for row, lp in zip(ids.cpu(), logp.cpu().tolist(), strict=True)]
