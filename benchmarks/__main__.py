"""``python -m benchmarks``: every benchmark, one after another (about 25 minutes).

The iris benchmark, gRPC beside REST, the one-shot clients, dynamic batching (mlp, and
the thread hop on iris), overload at ten times the sustainable rate, workers (shared
weights, restarts, 1 vs 2), hot swaps under load, ``ligeiro optimize`` (graph, int8,
fp16), ``ligeiro score`` on 10 million rows, the sentiment pipeline against seed
002's FastAPI server, and seed 003's experiment (the three servers at half a CPU and
128 MB under the seed's ramp 8x shorter, then each one's capacity; about 10 minutes),
TLS and tokens on the iris path, the cold starts, and a two-minute soak.
Extra arguments go to ``bench_iris`` (``python -m benchmarks --duration 3``); the
others run with their defaults. The JSON and Markdown reports
land in ``benchmarks/results/`` (git-ignored) under a UTC time stamp, so successive
runs never overwrite each other.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from . import (
    bench_batching,
    bench_cold_start,
    bench_grpc,
    bench_lifecycle,
    bench_oneshot,
    bench_optimize,
    bench_overload,
    bench_score,
    bench_seed003,
    bench_soak,
    bench_text,
    bench_tls,
    bench_workers,
)
from .bench_iris import main

RESULTS = Path(__file__).resolve().parent / "results"


if __name__ == "__main__":
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    stem = RESULTS / f"iris-{stamp}"
    status = main(sys.argv[1:], prog="python -m benchmarks", report_stem=stem)
    for bench in (bench_grpc, bench_oneshot):
        status = bench.main(["--markdown"]) or status
    for name, bench, args in (
        ("batching-mlp", bench_batching, ["--model", "mlp"]),
        ("batching-iris", bench_batching, ["--model", "iris"]),
        ("overload", bench_overload, []),
        ("workers", bench_workers, []),
        ("lifecycle", bench_lifecycle, []),
        ("optimize", bench_optimize, []),
        ("score", bench_score, []),
        ("text", bench_text, []),
        ("seed003", bench_seed003, ["--scale", "8"]),
    ):
        report = RESULTS / f"{name}-{stamp}"
        args += ["--markdown", f"{report}.md", "--json", f"{report}.json"]
        status = bench.main(args) or status
    # TLS and tokens on the iris path (keep-alive and a new connection per request), the
    # cold starts, and a short soak (the hour: python -m benchmarks.bench_soak --duration 3600).
    status = bench_tls.main(["--markdown", str(RESULTS / f"tls-{stamp}.md")]) or status
    status = bench_cold_start.main(["--rounds", "5"]) or status
    soak = ["--duration", "120", "--json", str(RESULTS / f"soak-{stamp}.json")]
    status = bench_soak.main(soak) or status
    sys.exit(status)
