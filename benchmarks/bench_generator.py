"""`ligeiro bench` against wrk: the same server, the same load, two load generators.

One ``ligeiro serve examples/models --workers 1`` pinned to core 0; on core 1, wrk
(``-t1 -c16``, what ``make bench`` uses) and ``ligeiro bench --concurrency 16`` load
``POST /v2/models/iris/infer`` with the seed's row, one after the other, alternating
which goes first, for ``--rounds`` rounds. It prints both generators' req/s and p50 and
the median (range) of the per-round ratio ``ligeiro bench / wrk``. Issue 9 asks for
agreement within 15 % at c=16.

Run: ``python -m benchmarks.bench_generator [--rounds 5] [--duration 5] [--warmup 1]
[--concurrency 16] [--markdown PATH]``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ligeiro.bench import BenchPlan, http_request, run_bench

from ._harness import (
    LOAD_CORE,
    MODELS,
    WORK_DIR,
    HttpRequest,
    ServerProcess,
    exclusive_machine,
    free_port,
)
from ._iris import V2_JSON
from ._rounds import ratio_cell
from ._wrk import run_wrk

BODY = V2_JSON  # the seed's iris row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_generator", description=__doc__
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--markdown", type=Path, help="also write the result here")
    options = parser.parse_args(argv)
    os.sched_setaffinity(0, {LOAD_CORE})  # ligeiro bench runs in this process, on core 1
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv_ = [
        sys.executable, "-m", "ligeiro", "serve", str(MODELS), "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", "--grpc-port", "0",
    ]  # fmt: skip
    wrk_request = HttpRequest(
        "POST", f"{url}/v2/models/iris/infer", BODY, {"Content-Type": "application/json"}
    )
    plan = BenchPlan(
        "127.0.0.1",
        port,
        http_request(f"{url}/v2/models/iris/infer", BODY),
        concurrency=[options.concurrency],
        duration_s=options.duration,
        warmup_s=options.warmup,
    )
    rows: list[tuple[float, float, float, float]] = []  # wrk req/s, p50; ours req/s, p50
    with (
        exclusive_machine(),
        ServerProcess(
            argv_, f"{url}/v2/health/ready", log_path=WORK_DIR / "generator.log"
        ) as server,
    ):
        server.start()
        for round_ in range(options.rounds):
            results: dict[str, tuple[float, float]] = {}
            for name in ("wrk", "ligeiro") if round_ % 2 == 0 else ("ligeiro", "wrk"):
                if name == "wrk":
                    if options.warmup > 0:
                        run_wrk(wrk_request, connections=options.concurrency,
                                duration_s=options.warmup)  # fmt: skip
                    load = run_wrk(
                        wrk_request, connections=options.concurrency, duration_s=options.duration
                    )
                    results[name] = (load.requests_per_s, load.p50_ms)
                else:
                    (level,) = run_bench(plan)
                    results[name] = (level.throughput_per_s, level.latency_ms["p50"])
            rows.append((*results["wrk"], *results["ligeiro"]))
            print(
                f"round {round_ + 1}: wrk {rows[-1][0]:,.0f} req/s p50 {rows[-1][1]:.2f} ms; "
                f"ligeiro bench {rows[-1][2]:,.0f} req/s p50 {rows[-1][3]:.2f} ms",
                flush=True,
            )
    throughput = [ours / wrk for wrk, _, ours, _ in rows]
    p50 = [ours / wrk for _, wrk, _, ours in rows]
    report = (
        f"`python -m benchmarks.bench_generator` ({options.rounds} rounds, "
        f"c={options.concurrency}, {options.duration:g} s per run): ligeiro bench / wrk "
        f"req/s {ratio_cell(throughput, 3)}, p50 {ratio_cell(p50, 3)}"
    )
    print(report)
    if options.markdown is not None:
        options.markdown.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
