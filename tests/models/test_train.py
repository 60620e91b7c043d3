"""A training smoke run: both stages run, losses fall, weights load back through load_model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models import load_model
from models.train import TrainConfig, run


def test_training_smoke_run_loss_falls(tmp_path: Path) -> None:
    cfg = TrainConfig(pool=512, triplets=256, batch=48, encoder_steps=40, fusion_steps=12,
                      robust_steps=0, randomise=0.0, warmup=5, lr=2e-3,
                      work_dir=str(tmp_path / "work"), out=str(tmp_path / "weights"),
                      checkpoint_every=20)
    result = run(cfg, plot=tmp_path / "loss.png")
    enc = np.asarray(result["encoder_loss"])
    assert len(enc) == 40
    assert enc[-8:].mean() < enc[:8].mean() - 0.1
    match = np.asarray(result["fusion_loss"]["match"])
    assert match[-4:].mean() < match[:4].mean()
    assert (tmp_path / "loss.png").stat().st_size > 1000
    m = load_model("fusion-tiny", pretrained=result["backbone"], fusion=result["fusion"])
    assert m.trained and m.has_fusion
    assert m.encode_texts(["a red circle"]).shape == (1, 128)


def test_training_resumes_from_checkpoint(tmp_path: Path) -> None:
    common = dict(pool=256, triplets=128, batch=32, warmup=2, work_dir=str(tmp_path / "work"),
                  out=str(tmp_path / "weights"), checkpoint_every=5, fusion_steps=2,
                  robust_steps=0)
    first = run(TrainConfig(encoder_steps=5, **common))  # type: ignore[arg-type]
    second = run(TrainConfig(encoder_steps=8, **common))  # type: ignore[arg-type]
    # the second run continues the first: the five recorded losses are kept, three are new
    assert second["encoder_loss"][:5] == first["encoder_loss"]
    assert len(second["encoder_loss"]) == 8


def test_train_command_keeps_the_recipe_defaults_it_is_not_given(tmp_path: Path) -> None:
    from dataclasses import asdict

    from app.cli import main

    out = tmp_path / "weights"
    assert main(["train", "--encoder-steps", "2", "--fusion-steps", "1", "--robust-steps", "1",
                 "--pool", "64",
                 "--triplets", "32", "--batch", "16", "--work-dir", str(tmp_path / "work"),
                 "--out", str(out), "--plot", ""]) == 0
    recipe = json.loads((out / "fusion-tiny.fusion.json").read_text())["recipe"]
    assert (recipe["encoder_steps"], recipe["fusion_steps"], recipe["pool"]) == (2, 1, 64)
    assert recipe["robust_steps"] == 1
    defaults = asdict(TrainConfig())
    for key in ("threads", "lr", "warmup", "object_weight", "randomise", "paraphrase",
                "robust_lr"):  # not on the command line
        assert recipe[key] == defaults[key]


def test_curriculum_runs_the_plain_phase_on_plain_scenes_then_the_robust_phase(
        tmp_path: Path) -> None:
    """`--robust-steps`: the plain phase trains on the plain pool, the robust phase continues
    the same weights on the randomised pool (its own checkpoint, so each resumes on its own);
    `--init` with no plain steps runs the robust phase on a backbone file alone."""
    work = tmp_path / "work"
    common = dict(pool=96, triplets=48, batch=16, warmup=2, fusion_steps=1, randomise=0.5,
                  paraphrase=0.5, checkpoint_every=100)
    result = run(TrainConfig(encoder_steps=3, robust_steps=4, work_dir=str(work),
                             out=str(tmp_path / "w1"), **common))  # type: ignore[arg-type]
    assert len(result["encoder_loss"]) == 3 + 4
    # both pools were rendered: the plain one for the plain phase, the randomised one after
    assert (work / "pool_96_64.npz").is_file() and (work / "pool_96_64_dr0.5.npz").is_file()
    import torch
    plain = torch.load(work / "encoder.pt", weights_only=False)
    robust = torch.load(work / "encoder_robust.pt", weights_only=False)
    assert (plain["step"], robust["step"]) == (3, 4)
    key = "visual.conv1.weight"
    assert not torch.equal(plain["model"][key], robust["model"][key])  # it went on training
    recipe = json.loads((tmp_path / "w1" / "fusion-tiny.fusion.json").read_text())["recipe"]
    assert (recipe["robust_steps"], recipe["randomise"]) == (4, 0.5)

    # the robust phase alone, from the backbone the first run wrote
    again = run(TrainConfig(encoder_steps=0, robust_steps=2, init=result["backbone"],
                            work_dir=str(tmp_path / "work2"), out=str(tmp_path / "w2"),
                            **common))  # type: ignore[arg-type]
    assert len(again["encoder_loss"]) == 2
    assert not (tmp_path / "work2" / "pool_96_64.npz").exists()  # no plain phase, no plain pool
    m = load_model("fusion-tiny", pretrained=again["backbone"], fusion=again["fusion"])
    assert m.trained and m.encode_texts(["a red circle"]).shape == (1, 128)
