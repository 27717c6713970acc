"""Scaling across cores: iris over REST with 1, 2, 4, … workers, each on its own core.

The server gets cores ``0 .. N-1`` (``taskset``) and ``--workers N --threads 1``; wrk
runs on the remaining cores (``--load-cores``, by default every core the server does
not get, with one wrk thread per load core). Each worker count is loaded at
``--connections-per-worker`` times N connections for ``--duration`` seconds after a
second of warm-up, for ``--rounds`` rounds; the table gives the median req/s, p99, CPU
per request, and the speed-up over one worker (ideal: N).

This needs more cores than the 2-vCPU development VM has: there it measures N = 1
only. The published numbers come from a 16-core machine.

Run: ``python -m benchmarks.bench_scaling [--workers 1,2,4,8] [--duration 10]
[--rounds 3] [--markdown PATH] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._harness import (
    HOST,
    MODELS,
    BenchmarkError,
    HttpRequest,
    ServerProcess,
    exclusive_machine,
    format_table,
    free_port,
    machine_info,
    write_report,
)
from ._iris import V2_JSON
from ._wrk import LoadResult, run_wrk

if TYPE_CHECKING:
    from collections.abc import Sequence

PACKAGES: Final = ("ligeiro", "onnxruntime", "numpy", "msgspec", "uvloop", "httptools")
BODY: Final = V2_JSON


@dataclass(frozen=True)
class Point:
    workers: int
    runs: list[LoadResult]
    cpu_us_per_request: list[float]

    @property
    def requests_per_s(self) -> float:
        return statistics.median(r.requests_per_s for r in self.runs)


def measure_workers(workers: int, load_cores: list[int], options: argparse.Namespace) -> Point:
    port = free_port(HOST)
    argv = [
        sys.executable, "-m", "ligeiro", "serve", str(MODELS), "--host", HOST,
        "--port", str(port), "--workers", str(workers), "--threads", "1", "--no-grpc",
    ]  # fmt: skip
    request = HttpRequest(
        "POST",
        f"http://{HOST}:{port}/v2/models/iris/infer",
        BODY,
        {"Content-Type": "application/json"},
    )
    connections = options.connections_per_worker * workers
    load: dict[str, Any] = {"core": ",".join(map(str, load_cores)), "threads": len(load_cores)}
    runs, cpu = [], []
    with tempfile.TemporaryDirectory(prefix="ligeiro-scaling-") as folder:
        log = Path(folder) / "server.log"
        core_list = f"0-{workers - 1}"
        with ServerProcess(
            argv, f"http://{HOST}:{port}/v2/health/ready", log_path=log, core=core_list
        ) as server:
            server.start(timeout_s=120)
            run_wrk(request, connections=connections, duration_s=1, **load)  # warm-up
            for _ in range(options.rounds):
                before = server.cpu_s()
                result = run_wrk(
                    request, connections=connections, duration_s=options.duration, **load
                )
                used = server.cpu_s() - before
                server.check_running()
                if result.non_2xx or result.socket_errors:
                    raise BenchmarkError(f"{workers} workers: failed requests: {result}")
                runs.append(result)
                cpu.append(used * 1e6 / result.requests)
    return Point(workers, runs, cpu)


def _range(values: Sequence[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def render(points: Sequence[Point], *, markdown: bool) -> str:
    base = points[0].requests_per_s if points else 1.0
    rows = [
        [
            str(p.workers),
            f"{p.requests_per_s:,.0f}",
            _range([r.requests_per_s for r in p.runs]),
            f"{statistics.median(r.p99_ms for r in p.runs):.2f}",
            f"{statistics.median(p.cpu_us_per_request):.0f}",
            f"{p.requests_per_s / base:.2f}x",
            f"{p.requests_per_s / base / p.workers * 100:.0f} %",
        ]
        for p in points
    ]
    headers = ["workers", "req/s", "range", "p99 ms", "CPU µs/req", "speed-up", "per-core"]
    return format_table(headers, rows, markdown=markdown)


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m benchmarks.bench_scaling"
) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts, comma-separated")
    parser.add_argument("--load-cores", help="cores for wrk, e.g. 8-15 (default: the rest)")
    parser.add_argument("--connections-per-worker", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    counts = [int(n) for n in options.workers.split(",")]
    most = max(counts)
    if options.load_cores:
        first, _, last = options.load_cores.partition("-")
        load_cores = list(range(int(first), int(last or first) + 1))
    else:
        load_cores = [c for c in cores if c >= most]
    usable = [n for n in counts if n <= len(cores) - len(load_cores) and load_cores]
    if not usable:
        print(f"{len(cores)} cores: too few for {options.workers} workers plus wrk")
        return 0
    os.sched_setaffinity(0, set(load_cores))
    with exclusive_machine():
        machine = machine_info(PACKAGES)
        points = [measure_workers(n, load_cores, options) for n in usable]
    print("\n" + render(points, markdown=False))
    report = (
        f"`{' '.join([prog, *argv])}`, {machine.summary()}; wrk on cores "
        f"{load_cores[0]}-{load_cores[-1]}\n\n{render(points, markdown=True)}\n"
    )
    print(f"\nMarkdown:\n\n{report}")
    if options.markdown:
        write_report(options.markdown, report)
    if options.json:
        write_report(options.json, json.dumps([asdict(p) for p in points], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
