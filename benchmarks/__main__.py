"""``python -m benchmarks``: the iris benchmark, gRPC beside REST, the one-shot clients.

Extra arguments go to ``bench_iris`` (``python -m benchmarks --duration 3``);
``bench_grpc`` and ``bench_oneshot`` run with their defaults. The JSON
and Markdown reports land in ``benchmarks/results/`` (git-ignored) under a UTC time
stamp, so successive runs never overwrite each other.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from . import bench_grpc, bench_oneshot
from .bench_iris import main

RESULTS = Path(__file__).resolve().parent / "results"


if __name__ == "__main__":
    stem = RESULTS / f"iris-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    status = main(sys.argv[1:], prog="python -m benchmarks", report_stem=stem)
    for bench in (bench_grpc, bench_oneshot):
        status = status or bench.main(["--markdown"])
    sys.exit(status)
