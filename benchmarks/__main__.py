"""``python -m benchmarks``: the iris benchmark with its defaults, results kept on disk.

Extra arguments go to ``bench_iris`` (``python -m benchmarks --duration 3``). The JSON
and Markdown reports land in ``benchmarks/results/`` (git-ignored) under a UTC time
stamp, so successive runs never overwrite each other.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from .bench_iris import main

RESULTS = Path(__file__).resolve().parent / "results"


def run(argv: list[str]) -> int:
    """Run ``bench_iris`` with report paths added for this run."""
    stem = RESULTS / f"iris-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    paths = ["--json", f"{stem}.json", "--markdown", f"{stem}.md"]
    return main([*paths, *argv], prog="python -m benchmarks")


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
