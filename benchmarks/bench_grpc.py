"""gRPC ModelInfer beside V2 REST on ligeiro, iris, one core: both gRPC transports.

Two ``ligeiro serve`` processes (pinned to core 0, one loaded at a time) serve the same
models, one with ``--grpc-transport grpcio`` (grpc.aio) and one with ``h2`` (ligeiro's
own HTTP/2 framing, ADR 0007). At each concurrency the four targets are loaded back to
back, in an order rotated every round, from core 1: REST with ``wrk`` (the V2 JSON
body), gRPC with ``h2load`` (Debian's nghttp2-client) sending a prebuilt, gRPC-framed
``ModelInferRequest`` with ``raw_input_contents`` over ``-c`` connections with one
stream each, the way wrk keeps one request per connection. REST is also loaded by
``h2load --h1`` (``rest-h2load``): on loopback the load generator's own kernel work is
partly charged to the server, and h2load's differs from wrk's, so gRPC is compared
with REST from both. h2load counts HTTP/2
answers, not gRPC statuses, so one real grpcio call is checked on each server first:
the same prebuilt request must come back with the right label.

``--method live`` loads ``ServerLive`` (and REST's ``/v2/health/live``) instead: the
transports' ceiling with a handler that does nothing.

Run: ``python -m benchmarks.bench_grpc [--rounds 3] [--duration 5] [--concurrency 1,16,64]``
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from ._harness import (
    HOST,
    LOAD_CORE,
    MODELS,
    ROOT,
    BenchmarkError,
    HttpRequest,
    ServerProcess,
    ensure_tools,
    exclusive_machine,
    format_table,
    free_port,
    machine_info,
)
from ._iris import V2_BODY, grpc_request
from ._rounds import ratio_cell, rotated
from ._wrk import measure

BIN: Final = Path(sys.executable).parent
SERVICE: Final = "/inference.GRPCInferenceService/"
# "rest" is loaded by wrk, "rest-h2load" by h2load --h1: the same generator as gRPC's,
# whose own cost on the shared loopback differs from wrk's.
TARGETS: Final = ("rest", "rest-h2load", "grpc.aio", "grpc-h2")
TRANSPORT: Final = {"grpc.aio": "grpcio", "grpc-h2": "h2"}


@dataclass(frozen=True)
class Result:
    transport: str
    connections: int
    requests_per_s: float
    latency_ms: float  # wrk's p50 for rest, h2load's mean for the others
    cpu_us_per_request: float
    failed: int


def check_grpc(port: int) -> None:
    """One real call through grpcio: the answer must be class 0 for this row."""
    import grpc

    from ligeiro.protocol._generated import grpc_service_pb2 as pb
    from ligeiro.protocol._generated import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest()
        request.ParseFromString(grpc_request()[5:])
        answer = stub.ModelInfer(request, timeout=10)
    label = np.frombuffer(answer.raw_output_contents[0], dtype=np.int64)
    if label.tolist() != [0]:
        raise BenchmarkError(f"gRPC answered label {label.tolist()}, expected [0]")


def run_h2load(
    url: str,
    body: Path | None,
    *,
    connections: int,
    duration_s: float,
    warmup_s: float,
    http1: bool = False,
) -> tuple[float, float, int, int]:
    """req/s, mean ms, requests done and requests failed, from one h2load run.

    gRPC by default (POST ``body``, a framed message); ``http1`` loads REST instead
    (JSON ``body``, or GET without one), so both can be compared from one load generator.
    """
    command = [
        "taskset", "-c", str(LOAD_CORE), "h2load", "-c", str(connections), "-m", "1",
        "-D", str(max(1, round(duration_s))), "--warm-up-time", str(max(1, round(warmup_s))),
        *(["--h1", "-H", "content-type: application/json"] if http1 else
          ["-H", "content-type: application/grpc", "-H", "te: trailers"]),
        *(["-d", str(body)] if body is not None else []), url,
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=duration_s + 60
    )
    out = done.stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out
    )
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if done.returncode != 0 or not (rate and counts and mean):
        raise BenchmarkError(f"h2load failed ({done.returncode}): {done.stderr or out}")
    mean_ms = _milliseconds(mean.group(1))
    return float(rate.group(1)), mean_ms, int(counts.group(1)), int(counts.group(3))


def _milliseconds(text: str) -> float:
    """h2load's durations ("812.34us", "9.73ms", "1.02s") in milliseconds."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise BenchmarkError(f"h2load printed a duration I cannot read: {text!r}")


def _ratios(runs: list[Result], bases: list[Result]) -> str:
    """Per-round ratios of req/s to the same round's ``bases``."""
    pairs = zip(bases, runs, strict=True)
    return ratio_cell(r.requests_per_s / b.requests_per_s for b, r in pairs)


def live_request() -> bytes:
    """An empty ServerLiveRequest, gRPC-framed."""
    return b"\x00\x00\x00\x00\x00"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--method", choices=["infer", "live"], default="infer")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    ensure_tools({"wrk": "wrk", "h2load": "nghttp2-client", "taskset": "util-linux"},
                 ("wrk", "h2load", "taskset"))  # fmt: skip

    ports = {target: (free_port(HOST), free_port(HOST)) for target in TRANSPORT}
    servers = {
        target: ServerProcess(
            [
                str(BIN / "ligeiro"),
                "serve",
                str(MODELS),
                "--host",
                HOST,
                "--port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
                "--workers",
                "1",
                "--grpc-transport",
                TRANSPORT[target],
            ],
            f"http://{HOST}:{http_port}/v2/health/ready",
            log_path=ROOT / ".bench" / "logs" / f"grpc-{TRANSPORT[target]}.log",
        )
        for target, (http_port, grpc_port) in ports.items()
    }
    http_port = ports["grpc.aio"][0]
    rest_body: bytes | None = None
    if args.method == "live":
        rest = HttpRequest("GET", f"http://{HOST}:{http_port}/v2/health/live")
        method, frame_bytes = "ServerLive", live_request()
    else:
        rest_body = V2_BODY
        rest = HttpRequest(
            "POST", f"http://{HOST}:{http_port}/v2/models/iris/infer", V2_BODY,
            {"Content-Type": "application/json"},
        )  # fmt: skip
        method, frame_bytes = "ModelInfer", grpc_request()
    results: list[Result] = []
    with (
        exclusive_machine(),
        tempfile.TemporaryDirectory(prefix="ligeiro-grpc-") as folder,
        servers["grpc.aio"],
        servers["grpc-h2"],
    ):
        frame = Path(folder) / "request.bin"
        frame.write_bytes(frame_bytes)
        json_body = Path(folder) / "request.json"
        json_body.write_bytes(rest_body or b"")
        for target, server in servers.items():
            server.start()
            check_grpc(ports[target][1])
        for round_index in range(args.rounds):
            for connections in concurrencies:
                for target in rotated(TARGETS, round_index):
                    if target == "rest":
                        server = servers["grpc.aio"]
                        m = measure(server, rest, connections=connections,
                                    duration_s=args.duration, warmup_s=args.warmup)  # fmt: skip
                        results.append(Result("rest", connections, m.load.requests_per_s,
                                              m.load.p50_ms, m.cpu_us_per_request,
                                              m.load.non_2xx + m.load.socket_errors))  # fmt: skip
                        continue
                    http1 = target == "rest-h2load"
                    server = servers["grpc.aio" if http1 else target]
                    before = server.cpu_s()
                    rate, mean_ms, done, failed = run_h2load(
                        rest.url if http1 else f"http://{HOST}:{ports[target][1]}{SERVICE}{method}",
                        (json_body if rest_body else None) if http1 else frame,
                        connections=connections,
                        duration_s=args.duration,
                        warmup_s=args.warmup,
                        http1=http1,
                    )
                    # The CPU covers the warm-up too: count its calls at the measured rate.
                    calls = done + rate * max(1, round(args.warmup))
                    cpu = (server.cpu_s() - before) * 1e6 / max(calls, 1)
                    results.append(Result(target, connections, rate, mean_ms, cpu, failed))
                    server.check_running()
    rows = []
    for connections in concurrencies:
        by = {t: [r for r in results if r.transport == t and r.connections == connections]
              for t in TARGETS}  # fmt: skip

        for target, runs in by.items():
            grpc = target.startswith("grpc")
            rows.append([
                target, str(connections),
                f"{statistics.median(r.requests_per_s for r in runs):,.0f}",
                f"{statistics.median(r.latency_ms for r in runs):.2f}",
                f"{statistics.median(r.cpu_us_per_request for r in runs):.0f}",
                str(sum(r.failed for r in runs)),
                _ratios(runs, by["rest"]) if grpc else "",
                _ratios(runs, by["rest-h2load"]) if grpc else "",
                _ratios(runs, by["grpc.aio"]) if target == "grpc-h2" else "",
            ])  # fmt: skip
    machine = machine_info(["ligeiro", "grpcio", "protobuf", "hpack", "onnxruntime"])
    print(f"{machine.date}: {method}, median of {args.rounds} round(s), "
          f"{args.duration:g} s per run")  # fmt: skip
    print(f"on {machine.summary()}")
    print("Latency is wrk's p50 for rest, h2load's mean per request for the others.")
    headers = ["target", "c", "req/s", "latency ms", "CPU µs/req", "failed", "/ rest",
               "/ rest-h2load", "/ grpc.aio"]  # fmt: skip
    print(format_table(headers, rows, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
