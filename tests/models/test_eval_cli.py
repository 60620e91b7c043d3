"""`fusion-search eval` and `fusion-search calibrate` on small galleries, through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.cli import main as cli
from models import load_model
from models.encoder import bundled_paths


def test_eval_reports_both_worlds_side_by_side_for_every_head(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["eval", "--n", "24", "--depth", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sizes"] == {"gallery": 24, "rerank_depth": 5, "ood_split": "ood-test"}
    for world in ("in_distribution", "ood"):
        r = report[world]
        assert r["gallery"] == 24
        assert set(r["t2i_r1_rerank_by_head"]) == {"late", "early", "attention", "cross1"}
        assert {"late", "early", "attention", "cross1"} <= set(r["compositional"])
        assert 0.0 <= r["match_ece"] <= 1.0
    side = report["side_by_side"]
    for metric in ("t2i_r1", "t2i_r1_rerank", "compositional.attention", "composed_r1.attention",
                   "heldout_pairs_t2i_r1.r1", "t2i_r1_by_query.heldout_phrasing.r1",
                   "t2i_r1_rerank_by_head.cross1"):
        assert set(side[metric]) == {"in_distribution", "ood"}, metric
    assert side["t2i_r1"]["in_distribution"] == report["in_distribution"]["t2i_r1"]
    assert cli(["eval", "--n", "12", "--depth", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["metric", "in_distribution", "ood"]
    assert any(line.split()[0] == "composed_r1.attention" for line in table)


def test_calibrate_writes_a_temperature_that_match_then_uses(tmp_path: Path) -> None:
    backbone, fusion, fusion_json = bundled_paths("fusion-tiny")
    heads = tmp_path / fusion.name
    shutil.copy(fusion, heads)
    meta = json.loads(fusion_json.read_text())
    meta.pop("calibration", None)
    (tmp_path / fusion_json.name).write_text(json.dumps(meta))
    plot = tmp_path / "reliability.png"
    assert cli(["calibrate", "--pretrained", str(backbone), "--fusion", str(heads), "--n", "30",
                "--depth", "5", "--plot", str(plot), "--write"]) == 0
    written = json.loads((tmp_path / fusion_json.name).read_text())["calibration"]
    assert written["fitted_on"] == "ood-val" and written["temperature"] > 0
    assert plot.stat().st_size > 10_000
    model = load_model("fusion-tiny", str(backbone), fusion=str(heads))
    assert model.temperature == written["temperature"]
    assert model.fusion is not None and model.fusion.match_bias == written["bias"]
