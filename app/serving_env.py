"""What a server process sets before torch loads (importing this module sets it).

``OMP_WAIT_POLICY=PASSIVE`` (unless already set): torch's OpenMP threads otherwise spin for a
while after each parallel region. Between a server's requests, and while several requests run
their forward passes at once on few cores, that spinning takes the cores the other requests
need. Measured with 4 concurrent clients on fusion-tiny over HTTP (docs/benchmarks.md#http):
more searches per second and a lower p50 and p99, a lone query no slower. Only the server sets
it; training and the in-process benchmarks keep OpenMP's default. libgomp reads it once, when
torch is first imported, so ``app.main`` imports this before ``models``.
"""

from __future__ import annotations

import os
import sys

POLICY = "PASSIVE"
_in_effect: str | None = None


def apply() -> str:
    """Set the policy where the environment does not name one (and torch has not loaded yet);
    returns the one in effect."""
    global _in_effect
    if _in_effect is None:
        if "OMP_WAIT_POLICY" in os.environ or "torch" not in sys.modules:
            _in_effect = os.environ.setdefault("OMP_WAIT_POLICY", POLICY)
        else:  # too late: OpenMP read its environment when torch loaded
            _in_effect = "default (torch loaded first)"
    return _in_effect


apply()
