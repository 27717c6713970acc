"""HTTP-layer bake-off for the V2 infer hot path (see docs/adr/0001-http-layer.md).

Four servers from ``benchmarks/_http_candidates.py`` answer ``POST /v2/models/iris/infer``
with the same per-request work; only the HTTP layer differs. Each one is started by
``benchmarks/_harness.py`` on a free port pinned to core 0, checked for keep-alive and
pipelining on a raw socket, loaded by ``wrk`` on core 1 at each concurrency, then sent
SIGTERM while one request is half sent, to see whether it drains.

Run: ``python -m benchmarks.bench_http_layer [--duration 10] [--rounds 3] [--json]``

The whole run holds the machine's benchmark lock. Benchmarks are hard: absolute numbers
drift with the machine; the ratios to uvicorn+Starlette, measured in the same run, are
what to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import httptools
import msgspec

from benchmarks._harness import (
    BenchmarkError,
    HttpRequest,
    Measurement,
    ServerProcess,
    ensure_tools,
    exclusive_machine,
    format_table,
    free_port,
    machine_info,
    measure,
)
from benchmarks._http_candidates import MODEL_ENV, READY_ROUTE, ROUTE, SAMPLE_REQUEST

if TYPE_CHECKING:
    from collections.abc import Sequence

REPO: Final = Path(__file__).resolve().parent.parent
DEFAULT_MODEL: Final = REPO / "examples" / "models" / "iris" / "1" / "model.onnx"
REFERENCE: Final = "uvicorn"
BODY: Final = msgspec.json.encode(SAMPLE_REQUEST)
# A second input with another answer (virginica, label 2), to tell pipelined replies apart.
OTHER_BODY: Final = BODY.replace(b"[5.1,3.5,1.4,0.2]", b"[6.7,3.0,5.2,2.3]")
PACKAGES: Final = (
    "numpy",
    "onnxruntime",
    "msgspec",
    "uvloop",
    "httptools",
    "granian",
    "uvicorn",
    "starlette",
)
_CANDIDATES_MODULE: Final = "benchmarks._http_candidates"


@dataclass(frozen=True)
class Candidate:
    """One HTTP layer: the command that serves it (the port is appended) and its label."""

    name: str
    title: str
    argv: tuple[str, ...]
    runs_model: bool = True


CANDIDATES: Final = (
    Candidate(
        "raw",
        "raw floor: uvloop + httptools, constant reply",
        ("-m", _CANDIDATES_MODULE, "raw"),
        runs_model=False,
    ),
    Candidate("httptools", "uvloop + httptools", ("-m", _CANDIDATES_MODULE, "httptools")),
    Candidate(
        "granian",
        "granian 2 RSGI",
        # --http 1 and --no-ws give granian the feature set of the other three.
        ("-m", "granian", "--interface", "rsgi", "--workers", "1", "--runtime-threads", "1",
         "--loop", "uvloop", "--http", "1", "--no-ws", "--log-level", "warning",
         "--factory", f"{_CANDIDATES_MODULE}:rsgi_app"),
    ),
    Candidate(
        "uvicorn",
        "uvicorn + Starlette",
        ("-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--workers", "1",
         "--no-access-log", "--log-level", "warning",
         "--factory", f"{_CANDIDATES_MODULE}:starlette_app"),
    ),
)  # fmt: skip


class Run(msgspec.Struct, frozen=True):
    """One candidate at one concurrency in one round."""

    candidate: str
    round: int
    concurrency: int
    measurement: Measurement


class Behaviour(msgspec.Struct, frozen=True):
    """What the raw-socket checks and the SIGTERM drain saw, for one candidate."""

    candidate: str
    pipelining: str
    keep_alive: str
    connection_close: str
    sigterm_in_flight: str
    sigterm_idle_connection: str
    exit_after_sigterm_s: float
    exit_code: int | None


class Report(msgspec.Struct):
    """Everything one run measured, with the context needed to publish it."""

    machine: dict[str, object]
    duration_s: int
    warmup_s: int
    rounds: int
    runs: list[Run]
    behaviour: list[Behaviour]


# --- raw HTTP/1.1 on a socket ---------------------------------------------------------


def request_bytes(body: bytes, *, close: bool = False) -> bytes:
    """One infer request, as it goes on the wire."""
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n%s" % (ROUTE.encode(), len(body), connection, body)
    )


class RawConnection:
    """A client socket that reads whole HTTP responses back, in the order they arrive."""

    def __init__(self, port: int, timeout_s: float = 5.0) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._done: list[tuple[int, bytes]] = []
        self.is_closed_by_peer = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._sock.close()

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def read(self, count: int) -> list[tuple[int, bytes]]:
        """Up to ``count`` ``(status, body)`` responses; fewer if the peer closes first."""
        while len(self._done) < count and not self.is_closed_by_peer:
            self._receive()
        done, self._done = self._done[:count], self._done[count:]
        return done

    def wait_closed(self) -> bool:
        """Whether the peer closes the connection before the socket's timeout."""
        with contextlib.suppress(TimeoutError):
            while not self.is_closed_by_peer:
                self._receive()
        return self.is_closed_by_peer

    def _receive(self) -> None:
        try:
            data = self._sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if data:
            self._parser.feed_data(data)
        else:
            self.is_closed_by_peer = True

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._done.append((self._parser.get_status_code(), b"".join(self._body)))
        self._body = []


def _verdict(responses: list[tuple[int, bytes]], expected_labels: list[int]) -> str:
    statuses = [status for status, _ in responses]
    if statuses != [200] * len(expected_labels):
        return f"FAIL: statuses {statuses}"
    labels = [msgspec.json.decode(body)["outputs"][0]["data"][0] for _, body in responses]
    return "ok" if labels == expected_labels else f"FAIL: labels {labels}"


def check_protocol(port: int, candidate: Candidate) -> dict[str, str]:
    """Pipelining (two requests in one write), keep-alive after it, ``Connection: close``."""
    expected = [0, 2] if candidate.runs_model else [0, 0]
    with RawConnection(port) as conn:
        conn.send(request_bytes(BODY) + request_bytes(OTHER_BODY))
        pipelining = _verdict(conn.read(2), expected)
        conn.send(request_bytes(OTHER_BODY))
        keep_alive = _verdict(conn.read(1), expected[1:])
    with RawConnection(port) as conn:
        conn.send(request_bytes(BODY, close=True))
        connection_close = _verdict(conn.read(1), [0])
        if connection_close == "ok" and not conn.wait_closed():
            connection_close = "FAIL: left open"
    return {
        "pipelining": pipelining,
        "keep_alive": keep_alive,
        "connection_close": connection_close,
    }


def _wait_exit(pid: int, timeout_s: float) -> int | None:
    """Wait on a pidfd for ``pid`` to exit; its exit code, or None if it is still running."""
    pidfd = os.pidfd_open(pid)
    try:
        if not select.select([pidfd], [], [], timeout_s)[0]:
            return None
    finally:
        os.close(pidfd)
    # Reaping here leaves ServerProcess.stop() nothing to do but close its log.
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def check_shutdown(server: ServerProcess, port: int) -> dict[str, str | float | int | None]:
    """SIGTERM the server (its main process, as an orchestrator would) mid-request.

    One keep-alive connection is idle and another has sent its head and half its body;
    the rest of the body follows 0.3 s after the signal.
    """
    half = len(BODY) // 2
    with RawConnection(port) as idle, RawConnection(port) as busy:
        idle.send(request_bytes(BODY))
        idle.read(1)
        busy.send(request_bytes(BODY)[:-half])
        time.sleep(0.2)  # let the server parse the head and wait for the body
        started = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        time.sleep(0.3)  # the request is in flight when the signal lands
        try:
            busy.send(BODY[-half:])
            replies = busy.read(1)
            in_flight = f"answered {replies[0][0]}" if replies else "dropped: closed"
        except OSError as exc:
            in_flight = f"dropped: {type(exc).__name__}"
        idle_state = "closed" if idle.wait_closed() else "left open"
    code = _wait_exit(server.pid, timeout_s=15)
    return {
        "sigterm_in_flight": in_flight,
        "sigterm_idle_connection": idle_state,
        "exit_after_sigterm_s": round(time.monotonic() - started, 2),
        "exit_code": code,
    }


# --- the run -------------------------------------------------------------------------


def bench_candidate(
    candidate: Candidate, args: argparse.Namespace, log_dir: Path, round_index: int
) -> tuple[list[Run], Behaviour]:
    """Start one candidate, check it, load it at every concurrency, then stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    request = HttpRequest("POST", base + ROUTE, BODY, {"Content-Type": "application/json"})
    server = ServerProcess(
        [sys.executable, *candidate.argv, "--port", str(port)],
        base + READY_ROUTE,
        log_path=log_dir / f"{candidate.name}-{round_index}.log",
        cwd=REPO,
        env={MODEL_ENV: str(args.model), "PYTHONPATH": str(REPO)},
    )
    runs = []
    with server:
        server.start()
        checks = check_protocol(port, candidate)
        for concurrency in args.concurrency:
            measurement = measure(
                server,
                request,
                connections=concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
            )
            runs.append(Run(candidate.name, round_index, concurrency, measurement))
        stopped = check_shutdown(server, port)
    return runs, Behaviour(candidate.name, **checks, **stopped)


def run(args: argparse.Namespace) -> Report:
    """Bench every selected candidate ``args.rounds`` times, rotating the order each round."""
    selected = [c for c in CANDIDATES if c.name in args.candidates]
    runs: list[Run] = []
    behaviour: list[Behaviour] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as log_dir:
        for round_index in range(args.rounds):
            shift = round_index % len(selected)
            for candidate in selected[shift:] + selected[:shift]:
                print(f"round {round_index + 1}: {candidate.title}", file=sys.stderr, flush=True)
                new_runs, seen = bench_candidate(candidate, args, Path(log_dir), round_index)
                runs += new_runs
                behaviour.append(seen)
    return Report(
        machine=machine_info(PACKAGES),
        duration_s=args.duration,
        warmup_s=args.warmup,
        rounds=args.rounds,
        runs=runs,
        behaviour=behaviour,
    )


def median_runs(runs: Sequence[Run]) -> dict[tuple[str, int], Run]:
    """Per (candidate, concurrency), the round with the median throughput."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.candidate, r.concurrency), []).append(r)
    return {
        key: sorted(group, key=lambda r: r.measurement.load.requests_per_s)[(len(group) - 1) // 2]
        for key, group in groups.items()
    }


def format_report(report: Report, *, markdown: bool) -> str:
    """The median-round numbers, with ratios to the reference, and the behaviour checks."""
    medians = median_runs(report.runs)
    rows = []
    for (name, concurrency), r in medians.items():
        m, load = r.measurement, r.measurement.load
        reference = medians.get((REFERENCE, concurrency))
        ratio = (
            f"{load.requests_per_s / reference.measurement.load.requests_per_s:.2f}"
            if reference
            else "-"
        )
        errors = load.non_2xx + load.socket_errors
        rows.append([
            name, str(concurrency), f"{load.requests_per_s:,.0f}", f"{load.p50_ms:.2f}",
            f"{load.p90_ms:.2f}", f"{load.p99_ms:.2f}", f"{m.cpu_us_per_request:.0f}",
            f"{m.peak_rss_mib:.0f}", ratio, str(errors),
        ])  # fmt: skip
    speed = format_table(
        ["candidate", "c", "req/s", "p50 ms", "p90 ms", "p99 ms", "CPU us/req", "RSS MiB",
         f"x {REFERENCE}", "errors"],
        rows,
        markdown=markdown,
    )  # fmt: skip
    last = {b.candidate: b for b in report.behaviour}  # the last round's, one per candidate
    behaviour = format_table(
        ["candidate", "pipelining", "keep-alive", "Connection: close",
         "SIGTERM, request in flight", "idle conn", "exit s", "exit code"],
        [[b.candidate, b.pipelining, b.keep_alive, b.connection_close, b.sigterm_in_flight,
          b.sigterm_idle_connection, f"{b.exit_after_sigterm_s:.2f}", str(b.exit_code)]
         for b in last.values()],
        markdown=markdown,
    )  # fmt: skip
    return f"{speed}\n\n{behaviour}"


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the bake-off under the benchmark lock, print a table or JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds before each (0: none)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",")],
        default=[1, 16, 64],
        help="comma-separated connection counts (default 1,16,64)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat all; report the median")
    parser.add_argument(
        "--candidates",
        type=lambda text: text.split(","),
        default=[c.name for c in CANDIDATES],
        help="comma-separated subset of " + ",".join(c.name for c in CANDIDATES),
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    if not args.model.exists():
        parser.error(f"no model at {args.model}: python examples/build_iris.py --out ...")
    try:
        ensure_tools({"wrk": "wrk", "taskset": "util-linux"})
        with exclusive_machine():
            report = run(args)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(report)).decode())
    else:
        print(format_report(report, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
