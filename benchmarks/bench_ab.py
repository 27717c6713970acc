"""Two commits of ligeiro side by side: what a change costs the hot path.

Each revision is checked out in a temporary git worktree and served with this venv's
Python (``PYTHONPATH=<worktree>/src``), one worker pinned to core 0, on a repository
holding the iris example alone; wrk loads each in turn from core 1 (V2 JSON, the seed's
row), alternating which goes first, for ``--rounds`` rounds. It prints each round and
the median (and range) of the per-round ratios B / A of throughput and of CPU per
request. Both revisions must accept today's ``ligeiro serve`` options.

Used for "tracing off costs ≤ 2 % against no tracing code at all" (issue 9): A is the
commit before the tracing hooks, B the one that added them.

``--route predict`` loads ``POST /v1/models/iris:predict`` with the seed's bare object
of named features instead.

Run: ``python -m benchmarks.bench_ab REV_A REV_B [--rounds 8] [--duration 4]
[--warmup 1] [--concurrency 16] [--route v2|predict] [--markdown PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ._harness import (
    LOAD_CORE,
    MODELS,
    ROOT,
    HttpRequest,
    ServerProcess,
    exclusive_machine,
    free_port,
)
from ._iris import SEED_PAYLOAD, V2_JSON
from ._rounds import ratio_cell
from ._wrk import measure

IRIS = MODELS / "iris"
# The seed's iris row, per route: V2 JSON, or the bare object of named features.
ROUTES = {
    "v2": ("/v2/models/iris/infer", V2_JSON),
    "predict": ("/v1/models/iris:predict", json.dumps(SEED_PAYLOAD).encode()),
}


def _worktree(revision: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), revision],
        check=True,
        capture_output=True,
    )
    return into


def _serve(src: Path, repository: Path, log: Path) -> tuple[ServerProcess, str]:
    port = free_port()
    argv = [
        sys.executable, "-m", "ligeiro", "serve", str(repository), "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", "--grpc-port", "0",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        argv, f"{url}/v2/health/ready", log_path=log, env={"PYTHONPATH": str(src)}
    )
    return server, url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ab", description=__doc__)
    parser.add_argument("a", help="the reference revision")
    parser.add_argument("b", help="the revision measured against it")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--route", choices=sorted(ROUTES), default="v2")
    parser.add_argument("--markdown", type=Path, help="also write the result here")
    options = parser.parse_args(argv)
    os.sched_setaffinity(0, {LOAD_CORE})
    path, body = ROUTES[options.route]
    runs: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    with tempfile.TemporaryDirectory(prefix="ligeiro-ab-") as folder, exclusive_machine():
        work = Path(folder)
        repository = work / "models"
        shutil.copytree(IRIS, repository / "iris")
        trees = {key: _worktree(getattr(options, key), work / key) for key in ("a", "b")}
        try:
            for round_ in range(options.rounds):
                order = ("a", "b") if round_ % 2 == 0 else ("b", "a")
                for key in order:
                    server, url = _serve(trees[key] / "src", repository, work / f"{key}.log")
                    with server:
                        server.start()
                        result = measure(
                            server,
                            HttpRequest("POST", f"{url}{path}", body,
                                        {"Content-Type": "application/json"}),
                            connections=options.concurrency,
                            duration_s=options.duration,
                            warmup_s=options.warmup,
                        )  # fmt: skip
                    runs[key].append((result.load.requests_per_s, result.cpu_us_per_request))
                    print(
                        f"round {round_ + 1}: {key} ({getattr(options, key)}) "
                        f"{runs[key][-1][0]:,.0f} req/s, {runs[key][-1][1]:.0f} us CPU/req",
                        flush=True,
                    )
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                    check=False,
                    capture_output=True,
                )
    throughput = [b[0] / a[0] for a, b in zip(runs["a"], runs["b"], strict=True)]
    cpu = [b[1] / a[1] for a, b in zip(runs["a"], runs["b"], strict=True)]
    report = (
        f"`python -m benchmarks.bench_ab {options.a} {options.b} --route {options.route}` "
        f"({options.rounds} rounds, "
        f"c={options.concurrency}, {options.duration:g} s per run): B / A req/s "
        f"{ratio_cell(throughput, 3)}, CPU per request {ratio_cell(cpu, 3)}"
    )
    print(report)
    if options.markdown is not None:
        options.markdown.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
