"""The `fusion-search` command run as a user runs it: demo-data, then ingest into a data dir."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
from api_support import (
    API,
    Apps,
    cli_command,
    hit_ids,
    scene_png,
    search_text,
    subprocess_env,
)

from app import cli

# Generous: each run imports torch, and these cores are shared with a training run.
TIMEOUT_S = 600


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli_command(), *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The JSON line `ingest` prints last."""
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_demo_data_then_ingest_twice(apps: Apps, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out, data = tmp_path / "demo", tmp_path / "data"

    # demo-data through the same entry point, in this process: it only draws and writes PNGs
    assert cli.main(["demo-data", str(out), "--n", "20"]) == 0
    tsv = Path(capsys.readouterr().out.strip())
    assert tsv == out / "captions.tsv"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"scene_{k:05d}.png" for k in range(20)]
    with tsv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["filepath"] for r in rows] == pngs and all(r["title"] for r in rows)
    titles = {r["filepath"]: r["title"] for r in rows}

    assert cli.main(["ingest", str(tsv), "--data", str(data), "--device", "cuda:x"]) == 2
    assert "FUSION_DEVICE: unknown device 'cuda:x'" in capsys.readouterr().err
    first = run_cli("ingest", str(tsv), "--data", str(data), "--workers", "2", "--device", "cpu",
                    cwd=tmp_path)
    assert summary(first) == {"added": 20, "already_present": 0, "bad": 0}

    # again, plus a folder holding one new image and one broken file
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "fresh.png").write_bytes(scene_png(0))
    (extra / "broken.png").write_bytes(os.urandom(300))
    (extra / "notes.txt").write_text("not an image suffix: never tried")
    second = run_cli("ingest", str(tsv), str(extra), "--data", str(data), "--tags", "extra",
                     "--workers", "2", cwd=tmp_path)
    assert summary(second) == {"added": 1, "already_present": 20, "bad": 1}
    assert "broken.png" in second.stderr and "skipped" in second.stderr

    client = apps.start(data)
    page = client.get(f"{API}/images", params={"limit": 100}).json()
    assert page["total"] == 21
    stored = {it["original_name"]: it for it in page["items"]}
    assert set(stored) == {*titles, "fresh.png"}
    for name, title in titles.items():
        assert stored[name]["caption"] == title
        assert stored[name]["content_type"] == "image/png"
        assert client.get(stored[name]["file_url"]).content == (out / name).read_bytes()
    assert stored["fresh.png"]["tags"] == ["extra"] and stored["fresh.png"]["caption"] is None
    for name in ("scene_00000.png", "scene_00013.png"):
        found = hit_ids(search_text(client, titles[name], k=21, rerank=False))
        assert stored[name]["id"] in found
