"""The wrk driver of the HTTP benchmark: its output parser on captured wrk 4.1 reports, and the
generated Lua script against a small in-process server (where wrk is installed)."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from http_checks import missing_tool

from bench import http_load
from bench.http_load import Search, lua_string, parse_wrk, run_wrk, wrk_script

# Debian wrk 4.1.0, -t2 -c4 -d1s --latency, the benchmark's script, fusion-tiny server under load
SEARCH_SAMPLE = """\
Running 1s test @ http://127.0.0.1:34065/api/v1/search/text
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    47.94ms   64.60ms 290.25ms   86.56%
    Req/Sec    86.41     45.37   171.00     76.47%
  Latency Distribution
     50%   19.53ms
     75%   36.54ms
     90%  155.88ms
     99%  274.86ms
  150 requests in 1.09s, 247.87KB read
Requests/sec:    137.16
Transfer/sec:    226.65KB
FUSION_WRK {"duration_us": 1093621, "requests": 150, "bytes": 253823, "connect": 0, "read": 0, \
"write": 0, "status": 0, "timeout": 0, "p50_us": 19528, "p90_us": 155880, "p99_us": 274862, \
"mean_us": 47939.9, "max_us": 290251}
"""

# the same script against python -m http.server, which answers every POST with 501
ERROR_SAMPLE = """\
Running 1s test @ http://127.0.0.1:42151/api/v1/search/text
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms    1.66ms  13.23ms   87.48%
    Req/Sec     1.03k   195.86     1.45k    65.00%
  Latency Distribution
     50%    1.58ms
     75%    2.41ms
     90%    3.99ms
     99%    9.03ms
  2062 requests in 1.00s, 1.09MB read
  Non-2xx or 3xx responses: 2062
Requests/sec:   2055.14
Transfer/sec:      1.09MB
FUSION_WRK {"duration_us": 1003339, "requests": 2062, "bytes": 1144806, "connect": 0, \
"read": 0, "write": 0, "status": 2062, "timeout": 0, "p50_us": 1579, "p90_us": 3990, \
"p99_us": 9028, "mean_us": 2098.0, "max_us": 13235}
"""


def _without_script_line(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("FUSION_WRK"))


def test_parser_reads_exact_percentiles_from_the_done_hook() -> None:
    r = parse_wrk(SEARCH_SAMPLE)
    assert r["percentiles_from"] == "lua done()"
    assert (r["p50_ms"], r["p90_ms"], r["p99_ms"], r["mean_ms"]) == (19.528, 155.88, 274.862,
                                                                      47.9399)
    assert r["requests"] == r["n"] == 150
    assert r["duration_s"] == pytest.approx(1.094, abs=1e-3)
    assert r["rps"] == pytest.approx(150 / 1.093621)
    assert r["errors"] == 0 and r["error_kinds"] == {}


def test_parser_falls_back_to_the_latency_distribution() -> None:
    r = parse_wrk(_without_script_line(SEARCH_SAMPLE))
    assert r["percentiles_from"] == "wrk --latency"
    assert (r["p50_ms"], r["p90_ms"], r["p99_ms"]) == (19.53, 155.88, 274.86)
    assert r["mean_ms"] == pytest.approx(47.94)
    assert r["requests"] == 150 and r["rps"] == pytest.approx(150 / 1.09)
    assert r["errors"] == 0


@pytest.mark.parametrize("strip", [False, True])
def test_error_answers_are_errors_not_requests(strip: bool) -> None:
    r = parse_wrk(_without_script_line(ERROR_SAMPLE) if strip else ERROR_SAMPLE)
    assert r["requests"] == 0 and r["rps"] == 0.0
    assert r["errors"] == 2062 and r["error_kinds"] == {"status>=400": 2062}


def test_socket_errors_are_counted_by_kind() -> None:
    text = _without_script_line(SEARCH_SAMPLE).replace(
        "Requests/sec:", "  Socket errors: connect 0, read 7, write 0, timeout 3\n"
                         "  Non-2xx or 3xx responses: 5\nRequests/sec:")
    r = parse_wrk(text)
    assert r["error_kinds"] == {"status>=400": 5, "read": 7, "timeout": 3}
    assert r["errors"] == 15 and r["requests"] == 145
    line = json.loads(SEARCH_SAMPLE.split("FUSION_WRK ", 1)[1])
    line.update(read=7, timeout=3, status=5)
    r = parse_wrk("FUSION_WRK " + json.dumps(line))
    assert r["error_kinds"] == {"status>=400": 5, "read": 7, "timeout": 3}
    assert r["requests"] == 145


def test_parser_refuses_output_without_a_report() -> None:
    with pytest.raises(ValueError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")
    with pytest.raises(ValueError):  # no --latency
        parse_wrk(SEARCH_SAMPLE.split("  Latency Distribution")[0]
                  + "  150 requests in 1.09s, 247.87KB read\n")


def test_lua_string_escapes_quotes_backslashes_and_non_ascii() -> None:
    assert lua_string('a "b" \\ c') == '"a \\"b\\" \\\\ c"'
    assert lua_string("é\n") == '"\\195\\169\\010"'


def test_script_posts_each_query_as_json(tmp_path: Path) -> None:
    """wrk runs the generated script for a fraction of a second (cut by SIGINT) against a
    server that records what it is sent: every body is one of the queries, as JSON."""
    if http_load.find_wrk() is None:
        missing_tool("wrk is not installed: `make wrk` (apt-get install wrk)")
    queries = ["a red circle", 'say "hi" \\ déjà vu', "blue square"]
    seen: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"path": self.path, "type": self.headers["Content-Type"],
                         **json.loads(body)})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        script = tmp_path / "search.lua"
        script.write_text(wrk_script(Search(tuple(queries), True), 1))
        wrk = http_load.find_wrk()
        assert wrk is not None and shutil.which(wrk)
        out = run_wrk(wrk, f"http://127.0.0.1:{server.server_address[1]}", script, 1, 0.3)
    finally:
        server.shutdown()
        server.server_close()
    r = parse_wrk(out)
    assert r["percentiles_from"] == "lua done()" and r["errors"] == 0
    # how long it ran (cut by SIGINT before -d1s) is a figure, not a bound: busy cores stretch it
    print(f"wrk ran {r['duration_s']} s for a 0.3 s cut")
    assert len(seen) >= 3 and r["requests"] <= len(seen)
    # one connection: the queries come in turn (wrk calls request() once beforehand, to check
    # the script, so the cycle need not start at the first one)
    order = [queries.index(str(s["query"])) for s in seen]
    assert all(b == (a + 1) % len(queries) for a, b in zip(order, order[1:], strict=False))
    assert all(s == {"path": "/api/v1/search/text", "type": "application/json",
                     "query": s["query"], "k": 10, "rerank": True} for s in seen)
