"""The service and the CLI start without bench/ (an image or install may leave it out):
`fusion-search` builds its `bench` sub-command lazily, and nothing the server runs imports it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from api_support import cli_command, subprocess_env

from app import cli

ROOT = Path(__file__).resolve().parents[2]
# Each run imports the CLI (and one of them torch and the model) on shared cores.
TIMEOUT_S = 300


@pytest.fixture
def no_bench(tmp_path: Path) -> dict[str, str]:
    """An environment where `import bench` fails, as where the package is not installed: a
    `bench` package first on the path that raises ImportError when imported."""
    shadow = tmp_path / "shadow" / "bench"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("bench is not installed here")\n')
    return subprocess_env(PYTHONPATH=str(shadow.parent))


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def test_help_and_serve_help_without_bench(no_bench: dict[str, str], tmp_path: Path) -> None:
    top = run([*cli_command(), "--help"], no_bench, tmp_path)
    assert top.returncode == 0, top.stderr
    for command in ("serve", "ingest", "bench"):
        assert command in top.stdout

    serve = run([*cli_command(), "serve", "--help"], no_bench, tmp_path)
    assert serve.returncode == 0, serve.stderr
    assert "--host" in serve.stdout and "--port" in serve.stdout

    # the one command that needs it says so, in one line, without a traceback
    bench = run([*cli_command(), "bench", "report"], no_bench, tmp_path)
    assert bench.returncode == 1
    assert "fusion-search bench needs the bench package" in bench.stderr
    assert "Traceback" not in bench.stderr


def test_the_service_starts_and_answers_without_bench(no_bench: dict[str, str],
                                                      tmp_path: Path) -> None:
    """The app's whole start-up (model, catalog, index) runs with bench unimportable, and
    leaves no bench module loaded."""
    script = textwrap.dedent(f"""
        import sys
        from fastapi.testclient import TestClient
        import app.cli
        from app.main import create_app
        from app.settings import Settings

        app.cli.build_parser()
        settings = Settings(data_dir={str(tmp_path / "data")!r}, demo=False, torch_threads=1)
        with TestClient(create_app(settings)) as client:
            assert client.get("/health").status_code == 200
            info = client.get("/api/v1/info")
            assert info.status_code == 200, info.text
        loaded = sorted(m for m in sys.modules if m == "bench" or m.startswith("bench."))
        assert not loaded, loaded
        print("served", info.json()["model"])
    """)
    # the checkout's app after the shadow bench; the working dir (first on the path) holds neither
    env = {**no_bench, "PYTHONPATH": f"{no_bench['PYTHONPATH']}:{ROOT}"}
    proc = run([sys.executable, "-c", script], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("served")


def test_bench_options_are_bench_run_s(capsys: pytest.CaptureFixture[str]) -> None:
    """With bench installed, `fusion-search bench` parses with bench.run's own parser."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: fusion-search bench" in out and "--quick" in out

    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "no-such-benchmark"])
    assert exit_.value.code == 2
    assert "invalid choice: 'no-such-benchmark'" in capsys.readouterr().err


def test_other_commands_still_reject_unknown_options(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo-data", str(tmp_path / "out"), "--n", "2", "--bogus"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
