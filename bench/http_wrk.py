"""The wrk driver of the HTTP benchmark: the Lua script it runs, one wrk run (cut with SIGINT
when shorter than a whole second) and the parser of its report."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .http_clients import SEARCH_PATH, Search

WRK_ENV = "FUSION_BENCH_WRK"  # "off" forces httpx; a path or name picks that wrk binary
WRK_THREADS = 2  # wrk threads at most (each drives concurrency/threads connections)

WRK_MARK = "FUSION_WRK"
_WRK_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s {"duration_us": %.0f, "requests": %.0f, "bytes": %.0f, "connect": %.0f, "read": %.0f, '
    .. '"write": %.0f, "status": %.0f, "timeout": %.0f, "p50_us": %.0f, "p90_us": %.0f, '
    .. '"p99_us": %.0f, "mean_us": %.1f, "max_us": %.0f}\\n',
    MARK, summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
"""


def find_wrk() -> str | None:
    """The wrk binary to drive searches with: ``$FUSION_BENCH_WRK`` (a path or name; "off"
    for none), else ``wrk`` on PATH; None where there is none."""
    choice = os.environ.get(WRK_ENV, "").strip()
    if choice.lower() in ("0", "off", "no", "none", "httpx"):
        return None
    return shutil.which(choice or "wrk")


def wrk_version(wrk: str) -> str:
    """``wrk debian/4.1.0-3+b2 [epoll]``: the first line ``wrk --version`` prints."""
    proc = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first = (proc.stdout + proc.stderr).strip().splitlines()[:1]
    return first[0].split(" Copyright")[0].strip() if first else "wrk"


def lua_string(text: str) -> str:
    """A Lua string literal of ``text`` (bytes outside printable ASCII as decimal escapes)."""
    out = []
    for b in text.encode():
        ch = chr(b)
        out.append("\\" + ch if ch in '"\\' else ch if 32 <= b < 127 else f"\\{b:03d}")
    return '"' + "".join(out) + '"'


def wrk_script(search: Search, threads: int) -> str:
    """The Lua script wrk runs: each thread formats one POST per query up front, then cycles
    through them from its own offset; ``done()`` prints one ``FUSION_WRK {json}`` line with
    the exact percentiles in microseconds."""
    bodies = ",\n".join("  " + lua_string(json.dumps(search.body(i)))
                        for i in range(len(search.queries)))
    return f"""-- written by bench/http_load.py for one wrk run
local bodies = {{
{bodies}
}}
local prepared = {{}}
local i = 0
local threads = 0
MARK = "{WRK_MARK}"

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  for n, body in ipairs(bodies) do
    prepared[n] = wrk.format("POST", {lua_string(SEARCH_PATH)},
                             {{["Content-Type"] = "application/json"}}, body)
  end
  i = (id or 0) * math.floor(#prepared / {threads})
end

function request()
  i = i % #prepared + 1
  return prepared[i]
end
{_WRK_DONE}"""


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text: str) -> dict[str, Any]:
    """The figures of one wrk run from its stdout: from the ``FUSION_WRK`` line that the
    script's ``done()`` prints (exact percentiles), else from wrk's own report (``--latency``
    percentiles, rounded as wrk prints them). ``requests`` and ``rps`` count the answers
    below 400; ``errors`` are the other answers plus socket errors, by kind."""
    for line in text.splitlines():
        if line.startswith(WRK_MARK + " "):
            d = json.loads(line[len(WRK_MARK) + 1:])
            kinds = {k: int(d[k]) for k in ("status", "connect", "read", "write", "timeout")}
            duration, answered = d["duration_us"] / 1e6, int(d["requests"])
            p = {q: d[f"p{q}_us"] / 1000 for q in (50, 90, 99)}
            mean, source = d["mean_us"] / 1000, "lua done()"
            break
    else:
        m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", text, re.M)
        if not m:
            raise ValueError("no wrk report in its output:\n" + text[-2000:])
        answered, duration = int(m.group(1)), _seconds(m.group(2))
        p = {int(q): _seconds(v) * 1000
             for q, v in re.findall(r"^\s*(\d+)%\s+([\d.]+\w+)\s*$", text, re.M)}
        if not {50, 90, 99} <= set(p):
            raise ValueError("no latency distribution in the wrk report (run it with --latency)")
        lat = re.search(r"^\s*Latency\s+([\d.]+\w+)\s", text, re.M)
        mean, source = (_seconds(lat.group(1)) * 1000 if lat else float("nan")), "wrk --latency"
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                         r"timeout (\d+)", text)
        status = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        kinds = {"status": int(status.group(1)) if status else 0,
                 **{k: int(sock.group(i)) if sock else 0
                    for i, k in enumerate(("connect", "read", "write", "timeout"), 1)}}
    ok = answered - kinds["status"]
    errors = {("status>=400" if k == "status" else k): v for k, v in kinds.items() if v}
    return {"requests": ok, "rps": ok / duration if duration else 0.0,
            "errors": sum(errors.values()), "error_kinds": errors,
            "p50_ms": round(p[50], 4), "p90_ms": round(p[90], 4), "p99_ms": round(p[99], 4),
            "mean_ms": round(mean, 4), "n": ok, "duration_s": round(duration, 3),
            "percentiles_from": source}


def wrk_command(wrk: str, base: str, script: Path, concurrency: int, seconds: int) -> list[str]:
    threads = min(concurrency, WRK_THREADS)
    return [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "60s",
            "--latency", "-s", str(script), base + SEARCH_PATH]


def run_wrk(wrk: str, base: str, script: Path, concurrency: int, seconds: float) -> str:
    """One wrk run; its stdout. wrk takes whole seconds: a shorter or fractional time is cut
    with SIGINT, after which wrk stops and reports as at the end of ``-d`` (its report gives
    the time it really ran)."""
    whole = seconds >= 1 and float(seconds).is_integer()
    cmd = wrk_command(wrk, base, script, concurrency, int(seconds) if whole
                      else max(1, math.ceil(seconds)))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not whole:
        time.sleep(seconds)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=math.ceil(seconds) + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {proc.returncode}:\n{err}{out}")
    return out


def wrk_drive(wrk: str, base: str, search: Search, concurrency: int, duration: float,
              warmup: float) -> dict[str, Any]:
    """Closed-loop load with wrk: ``concurrency`` connections for ``duration`` s after a wrk
    run of ``warmup`` s whose figures are dropped."""
    with tempfile.TemporaryDirectory(prefix="fusion-wrk-") as tmp:
        script = Path(tmp) / "search.lua"
        script.write_text(wrk_script(search, min(concurrency, WRK_THREADS)))
        if warmup > 0:
            run_wrk(wrk, base, script, concurrency, warmup)
        out = run_wrk(wrk, base, script, concurrency, duration)
    return {"concurrency": concurrency, **parse_wrk(out),
            "threads": min(concurrency, WRK_THREADS)}
