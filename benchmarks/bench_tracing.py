"""Tracing's cost: ligeiro iris at c=16 with tracing off and on, in rounds, with wrk.

Off is ligeiro as shipped (no ``--otel-endpoint``, no ``OTEL_*`` variable); on exports
every request's five spans over OTLP/HTTP to a dummy collector in this process (a
``http.server`` answering 200 to ``POST /v1/traces``), so the cost measured is
ligeiro's (building spans, the exporter's batching thread), not a collector's.

"Tracing off against no tracing code at all" cannot be run side by side (it would be
the previous commit), so the off path is counted instead: one ``is not None`` test per
inference request (``HttpApp._model_route``, ``GrpcService._infer``), two header-length
comparisons per request header, two more ``None`` assignments per request and two more
arguments through ``handle``, and one method call (``HttpApp._infer_response``) on
``:infer``. The micro-benchmark below times the first and the last of these, for scale
against the measured time per request.

Run: ``python -m benchmarks.bench_tracing [--rounds 3] [--duration 5] [--warmup 1]
[--concurrency 16] [--json PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import statistics
import threading
import timeit
from pathlib import Path

from ._harness import LOAD_CORE, ensure_tools, exclusive_machine, int_list, machine_info
from ._iris import V2_PAYLOAD, ensure_models, v2_predicts_class_0
from ._rounds import Rounds, median_runs, round_ratios
from ._targets import Target, ligeiro_command, run_round

PACKAGES = ("ligeiro", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")


class _Collector(http.server.BaseHTTPRequestHandler):
    """Answers every OTLP export with 200 and counts the bytes."""

    received = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        _Collector.received += len(self.rfile.read(length))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def dummy_collector() -> object:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def off_path_ns() -> dict[str, float]:
    """Nanoseconds per ``is not None`` test and per extra method call, on this machine."""

    class App:
        tracing = None

        def helper(self) -> int:
            return 1

    app = App()
    loops = 2_000_000
    test = timeit.timeit("app.tracing is not None", globals={"app": app}, number=loops)
    call = timeit.timeit("app.helper()", globals={"app": app}, number=loops)
    empty = timeit.timeit("pass", number=loops)
    return {
        "none_test_ns": (test - empty) / loops * 1e9,
        "method_call_ns": (call - empty) / loops * 1e9,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_tracing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", default=[16], type=int_list)
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args(argv)
    os.sched_setaffinity(0, {LOAD_CORE})
    measured = Rounds()
    with exclusive_machine(), dummy_collector() as collector:
        ensure_tools()
        ensure_models()
        machine = machine_info(PACKAGES)
        off = Target(
            "tracing-off",
            ligeiro_command(),
            "/v2/health/ready",
            "/v2/models/iris/infer",
            V2_PAYLOAD,
            v2_predicts_class_0,
            is_baseline=False,
        )
        on = Target("tracing-on", ligeiro_command(), "/v2/health/ready", "/v2/models/iris/infer",
                    V2_PAYLOAD, v2_predicts_class_0, is_baseline=False,
                    env={"OTEL_EXPORTER_OTLP_ENDPOINT": str(collector)})  # fmt: skip
        for index in range(options.rounds):
            run_round(index, [off, on], options, measured)
    micro = off_path_ns()
    medians = median_runs(measured.runs)
    report: dict[str, object] = {"machine": str(machine), "off_path": micro, "rows": []}
    print(f"\n{machine}\n")
    print(f"{'c':>4} {'off req/s':>10} {'on req/s':>10} {'on/off (median of rounds)':>26}")
    for connections in options.concurrency:
        ratios = round_ratios(measured.runs, "tracing-on", "tracing-off").get(connections, [])
        off_rate = medians[("tracing-off", connections)].requests_per_s
        on_rate = medians[("tracing-on", connections)].requests_per_s
        ratio = statistics.median(ratios) if ratios else float("nan")
        print(f"{connections:>4} {off_rate:>10.0f} {on_rate:>10.0f} {ratio:>26.3f}")
        per_request_ns = 1e9 / off_rate
        share = (micro["none_test_ns"] + micro["method_call_ns"]) / per_request_ns
        print(
            f"     off path: {micro['none_test_ns']:.1f} ns per None test, "
            f"{micro['method_call_ns']:.1f} ns per method call: "
            f"{share * 100:.3f} % of the {per_request_ns / 1e3:.1f} us a request takes"
        )
        report["rows"].append(  # type: ignore[attr-defined]
            {
                "concurrency": connections,
                "off_rps": off_rate,
                "on_rps": on_rate,
                "on_over_off": ratios,
                "off_path_share": share,
            }
        )
    print(f"collector received {_Collector.received} bytes of spans")
    if measured.failures:
        print(f"failures: {measured.failures}")
    if options.json:
        options.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
