"""The tests' throwaway PostgreSQL server (bench/pg_cluster.py makes it): ``require_cluster``
starts one, or skips where the server binaries or psycopg are missing, and fails instead when
``CI`` is set (`make test` installs both).

(tests/ is on the import path: ``from pg_support import PgCluster, require_cluster``.)
"""

from __future__ import annotations

import os
import shutil

from http_checks import missing_tool

from bench.pg_cluster import PgCluster, find_bin_dir

__all__ = ["PgCluster", "require_cluster"]


def require_cluster() -> PgCluster:
    """A started cluster; skips where the binaries or psycopg are missing (fails under CI)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing_tool("psycopg is not installed (pip install -e '.[postgres]')")
    bin_dir = find_bin_dir()
    if bin_dir is None:
        missing_tool("PostgreSQL server binaries (initdb, pg_ctl) not found; `make postgres`")
    assert bin_dir is not None
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing_tool("running as root without runuser: initdb cannot run")
    cluster = PgCluster(bin_dir)
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
