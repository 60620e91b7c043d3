"""The server sets OMP_WAIT_POLICY=PASSIVE before torch loads (app/serving_env.py), keeps what an
operator set, and /api/v1/info says which policy torch's OpenMP threads run under — including
when torch was loaded first and the setting came too late."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from api_support import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


def info_in_fresh_process(tmp_path: Path, torch_first: bool, **env: str) -> dict[str, str]:
    script = textwrap.dedent(f"""
        import json, os
        {"import torch" if torch_first else ""}
        from fastapi.testclient import TestClient
        from app.main import create_app
        from app.settings import Settings

        settings = Settings(data_dir={str(tmp_path / "data")!r}, demo=False, torch_threads=1)
        with TestClient(create_app(settings)) as client:
            info = client.get("/api/v1/info")
            assert info.status_code == 200, info.text
        print(json.dumps({{"info": info.json()["omp_wait_policy"],
                          "env": os.environ.get("OMP_WAIT_POLICY", "")}}))
    """)
    base = subprocess_env(**env)
    if "OMP_WAIT_POLICY" not in env:
        base.pop("OMP_WAIT_POLICY", None)
    proc = subprocess.run([sys.executable, "-c", script], env=base, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize(("torch_first", "env", "expected"), [
    (False, {}, {"info": "PASSIVE", "env": "PASSIVE"}),
    (False, {"OMP_WAIT_POLICY": "ACTIVE"}, {"info": "ACTIVE", "env": "ACTIVE"}),
    (True, {}, {"info": "default (torch loaded first)", "env": ""}),
], ids=["server-default", "operator-setting-kept", "too-late-said-so"])
def test_info_reports_the_openmp_wait_policy_in_effect(
        tmp_path: Path, torch_first: bool, env: dict[str, str], expected: dict[str, str]) -> None:
    assert info_in_fresh_process(tmp_path, torch_first, **env) == expected
