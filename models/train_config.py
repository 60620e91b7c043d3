"""The training recipe's settings: one dataclass, saved with the checkpoints and the weights."""

from __future__ import annotations

from dataclasses import dataclass, field

from .encoder import WEIGHTS_DIR


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved with its checkpoints."""

    model: str = "fusion-tiny"
    pretrained: str | None = None
    data: str | None = None  # a TSV (filepath, title) of one's own captioned images
    out: str = str(WEIGHTS_DIR)
    work_dir: str = "runs/train"
    pool: int = 24000  # pre-rendered training scenes
    triplets: int = 12000  # pre-rendered composed triplets
    batch: int = 192
    encoder_steps: int = 2000
    fusion_steps: int = 1000
    lr: float = 1e-3
    fusion_lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.1
    threads: int = 0
    seed: int = 0
    checkpoint_every: int = 200
    aux_weight: float = 1.0  # scene-graph attribute prediction beside the contrastive loss
    layout_weight: float = 10.0  # where each colour and shape sits, from both towers' embeddings
    object_weight: float = 1.0  # shape, colour and size of each object from the tokens under it
    fusion_width: int = 128
    fusion_depth: int = 2
    token_layer: int = -1  # vision block the fusion heads read patch tokens from (-1: last)
    coords: bool = True  # fusion heads see each patch's (x, y) grid position
    mined: int = 24  # captions per stage-2 step whose top-8 dual-encoder hits are match examples
    image_size: int | None = None  # input size other than the config's (open_clip's override)
    # domain randomisation (models/synthetic/render_random.py, randomise.py) in a curriculum:
    # after the plain stage 1 (on the plain pool), ``robust_steps`` more at ``robust_lr`` on the
    # pool drawn with ``randomise``, captions paraphrased (models/train_encoder.py); stage 2 then
    # trains on that pool too. Measured against the plain recipe in docs/model-card.md.
    randomise: float = 0.3  # share of pool scenes and triplets drawn with free layout, wider
    #                         scales, geometry, styles and backgrounds, then photometric noise
    paraphrase: float = 0.25  # share of robust-phase captions with surface noise (articles,
    #                           word order, a typo)
    robust_steps: int = 1200
    robust_lr: float = 3e-4
    init: str | None = None  # start stage 1 from this backbone (safetensors), e.g. to run only
    #                          the robust phase on weights a plain stage 1 made
    losses: dict[str, list[float]] = field(default_factory=dict)
