"""The prepared GPU script (python -m bench.gpu): its whole path runs here with the CPU standing
in for the GPU, it refuses cleanly where no GPU is, and the report says what it holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.gpu import gpu_goals, main
from bench.report_goals import NOT_MEASURED


def test_cpu_standing_in_for_the_gpu_writes_comparable_rows(tmp_path: Path) -> None:
    assert main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["device"] == "cpu" and result["quick"] is True
    base, other = result["rows"]
    assert (base["model"], base["device"], other["device"]) == ("fusion-tiny", "cpu", "cpu")
    for r in (base, other):
        assert r["images_per_s"] > 0 and r["query_p50_ms"] > 0
    # the same weights on the same device: the embeddings agree, the ratios are finite
    assert other["image_cosine"] > 0.999 and other["text_cosine"] > 0.999
    assert other["images_x_cpu"] > 0 and other["query_x_cpu"] > 0
    assert result["run"]["command"].startswith("python -m bench.gpu --device cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 2
    assert "no GPU here" in capsys.readouterr().err
    assert not (tmp_path / "gpu.json").exists()


def test_report_line_names_the_script_until_a_gpu_was_measured() -> None:
    (missing,) = gpu_goals(None)
    assert missing.verdict == NOT_MEASURED and "python -m bench.gpu" in missing.measured
    cpu_only = {"quick": True, "rows": [{"device": "cpu"}, {"device": "cpu"}]}
    assert gpu_goals(cpu_only)[0].verdict == NOT_MEASURED
    row = {"model": "ViT-B-32", "device": "cuda", "images_per_s": 2400.0, "images_x_cpu": 140.0,
           "query_p50_ms": 2.5, "query_x_cpu": 13.0, "image_cosine": 0.99991,
           "text_cosine": 0.99995}
    (measured,) = gpu_goals({"quick": False, "rows": [{"device": "cpu"}, row]})
    assert measured.verdict == "reported"
    assert "ViT-B-32: 2,400 images/s (140.0× the CPU), one query p50 2.50 ms (13.0×)" in \
        measured.measured
