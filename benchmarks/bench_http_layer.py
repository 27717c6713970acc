"""HTTP-layer bake-off for the V2 infer hot path (see docs/adr/0001-http-layer.md).

Five servers from ``benchmarks/_http_candidates.py`` (four HTTP layers and a floor that
skips the work) answer ``POST /v2/models/iris/infer`` with the same per-request work;
only the HTTP layer differs. Each one is started by
``benchmarks/_harness.py`` on a free port pinned to core 0, checked for keep-alive and
pipelining on a raw socket, loaded by ``wrk`` on core 1 at each concurrency, then sent
SIGTERM while one request is half sent, to see whether it drains.

Run: ``python -m benchmarks.bench_http_layer [--duration 10] [--rounds 5]
[--candidates httptools,granian,uvicorn] [--json [PATH]] [--markdown [PATH]]``; a saved
JSON report prints again with ``--from-json PATH``. Server logs go to
``.bench/logs/http-layer/``.

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
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import httptools
import msgspec

from ._harness import (
    MODELS,
    ROOT,
    WORK_DIR,
    BenchmarkError,
    HttpRequest,
    Machine,
    ServerProcess,
    ensure_tools,
    exclusive_machine,
    format_table,
    free_port,
    machine_info,
)
from ._http_candidates import MODEL_ENV, READY_ROUTE, ROUTE, SAMPLE_REQUEST
from ._rounds import Run, Spread, describe_rounds, median_runs, rates, rotated, round_ratios
from ._wrk import measure

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_MODEL: Final = MODELS / "iris" / "1" / "model.onnx"
LOG_DIR: Final = WORK_DIR / "logs" / "http-layer"
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
        "httptools-task",
        "uvloop + httptools, a task per request",
        ("-m", _CANDIDATES_MODULE, "httptools-task"),
    ),
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


class ProtocolChecks(msgspec.Struct, frozen=True):
    """HTTP/1.1 behaviour seen on a raw socket: "ok", or what went wrong."""

    pipelining: str
    keep_alive: str
    connection_close: str
    expect_continue: str


class ShutdownCheck(msgspec.Struct, frozen=True):
    """What a SIGTERM did to a request in flight and to an idle keep-alive connection."""

    in_flight: str
    idle_connection: str
    exit_s: float
    exit_code: int | None


class Behaviour(msgspec.Struct, frozen=True):
    """One candidate's start-up time, protocol checks and shutdown, in one round."""

    candidate: str
    startup_s: float
    protocol: ProtocolChecks
    shutdown: ShutdownCheck


class Report(msgspec.Struct):
    """Everything one run measured, with the context needed to publish it."""

    machine: Machine
    duration_s: int
    warmup_s: int
    rounds: int
    runs: list[Run]
    behaviour: list[Behaviour]


# --- raw HTTP/1.1 on a socket ---------------------------------------------------------


def request_bytes(body: bytes, *, extra_headers: bytes = b"") -> bytes:
    """One infer request, as it goes on the wire."""
    return (
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n%s" % (ROUTE.encode(), len(body), extra_headers, body)
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

    def set_timeout(self, timeout_s: float) -> None:
        self._sock.settimeout(timeout_s)

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


def check_protocol(port: int, candidate: Candidate, pipelined: int = 16) -> ProtocolChecks:
    """Pipelining (requests with alternating answers in one write), keep-alive, close.

    ``pipelined`` requests go out in a single ``send``; their replies must come back
    complete and in order. The connection must then serve one more request, and a request
    with ``Connection: close`` must be answered and then closed by the server.
    """
    bodies = [BODY, OTHER_BODY] * (pipelined // 2)
    expected = [0, 2] * (pipelined // 2) if candidate.runs_model else [0] * pipelined
    with RawConnection(port) as conn:
        conn.send(b"".join(request_bytes(body) for body in bodies))
        pipelining = _verdict(conn.read(pipelined), expected)
        conn.send(request_bytes(OTHER_BODY))
        keep_alive = _verdict(conn.read(1), expected[1:2])
    with RawConnection(port) as conn:
        conn.send(request_bytes(BODY, extra_headers=b"Connection: close\r\n"))
        connection_close = _verdict(conn.read(1), [0])
        if connection_close == "ok" and not conn.wait_closed():
            connection_close = "FAIL: left open"
    return ProtocolChecks(pipelining, keep_alive, connection_close, check_expect_continue(port))


def check_expect_continue(port: int, wait_s: float = 0.5) -> str:
    """Whether ``Expect: 100-continue`` gets its interim 100 (curl waits 1 s without it)."""
    head = request_bytes(BODY, extra_headers=b"Expect: 100-continue\r\n")[: -len(BODY)]
    with RawConnection(port, timeout_s=wait_s) as conn:
        conn.send(head)
        try:
            interim = conn.read(1)
        except TimeoutError:
            interim = []
        conn.send(BODY)
        conn.set_timeout(5.0)
        final = _verdict(conn.read(1), [0])
    if interim and interim[0][0] == 100:
        return final
    return f"no 100 Continue; {final}"


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


def check_shutdown(server: ServerProcess, port: int) -> ShutdownCheck:
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
    return ShutdownCheck(in_flight, idle_state, round(time.monotonic() - started, 2), code)


# --- the run -------------------------------------------------------------------------


def bench_candidate(
    candidate: Candidate, args: argparse.Namespace, round_index: int
) -> tuple[list[Run], Behaviour]:
    """Start one candidate, check it, load it at every concurrency, then stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    request = HttpRequest("POST", base + ROUTE, BODY, {"Content-Type": "application/json"})
    server = ServerProcess(
        [sys.executable, *candidate.argv, "--port", str(port)],
        base + READY_ROUTE,
        log_path=LOG_DIR / f"{candidate.name}-{round_index + 1}.log",
        cwd=ROOT,
        env={MODEL_ENV: str(args.model), "PYTHONPATH": str(ROOT)},
    )
    runs = []
    with server:
        startup_s = round(server.start(), 2)
        checks = check_protocol(port, candidate)
        for concurrency in args.concurrency:
            measurement = measure(
                server,
                request,
                connections=concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
            )
            runs.append(Run(candidate.name, round_index + 1, concurrency, measurement))
        server.check_running()
        stopped = check_shutdown(server, port)
    return runs, Behaviour(candidate.name, startup_s, checks, stopped)


def run(args: argparse.Namespace) -> Report:
    """Bench every selected candidate ``args.rounds`` times, rotating the order each round."""
    selected = [c for c in CANDIDATES if c.name in args.candidates]
    runs: list[Run] = []
    behaviour: list[Behaviour] = []
    for round_index in range(args.rounds):
        # Rotate the order, so no candidate always runs first or on a warmer machine.
        for candidate in rotated(selected, round_index):
            print(f"round {round_index + 1}: {candidate.title}", file=sys.stderr, flush=True)
            new_runs, seen = bench_candidate(candidate, args, round_index)
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


SPEED_COLUMNS: Final = (
    "candidate",
    "c",
    "req/s",
    "req/s range",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "CPU us/req",
    "CPU %",
    "RSS MiB",
    f"x {REFERENCE}",
    "errors",
)
BEHAVIOUR_COLUMNS: Final = (
    "candidate",
    "start s",
    "pipelining",
    "keep-alive",
    "Connection: close",
    "Expect: 100-continue",
    "SIGTERM, request in flight",
    "idle conn",
    "exit s",
    "exit code",
)


def _speed_row(run: Run, round_rates: list[float], ratios: list[float]) -> list[str]:
    load = run.measurement.load
    # The ratio is taken within each round (minutes apart, same machine state), then the
    # median over rounds: steadier on a shared machine than a ratio of medians.
    return [
        run.candidate,
        str(run.concurrency),
        f"{load.requests_per_s:,.0f}",
        Spread.of(round_rates).range(",.0f"),
        f"{load.p50_ms:.2f}",
        f"{load.p90_ms:.2f}",
        f"{load.p99_ms:.2f}",
        f"{run.measurement.cpu_us_per_request:.0f}",
        # Under 100 % at c >= 16 means the server's core was not all its own (shared machine).
        f"{run.measurement.cpu_us_per_request * load.requests_per_s / 1e4:.0f}",
        f"{run.measurement.peak_rss_mib:.0f}",
        f"{Spread.of(ratios).median:.2f}" if ratios else "-",
        str(load.non_2xx + load.socket_errors),
    ]


def _behaviour_row(rounds: list[Behaviour]) -> list[str]:
    def seen(cell: Callable[[Behaviour], object]) -> str:
        """The value every round saw, or each distinct value when rounds disagree."""
        return " / ".join(dict.fromkeys(str(cell(b)) for b in rounds))

    return [
        rounds[0].candidate,
        f"{statistics.median(b.startup_s for b in rounds):.2f}",
        seen(lambda b: b.protocol.pipelining),
        seen(lambda b: b.protocol.keep_alive),
        seen(lambda b: b.protocol.connection_close),
        seen(lambda b: b.protocol.expect_continue),
        seen(lambda b: b.shutdown.in_flight),
        seen(lambda b: b.shutdown.idle_connection),
        f"{statistics.median(b.shutdown.exit_s for b in rounds):.2f}",
        seen(lambda b: b.shutdown.exit_code),
    ]


def format_report(report: Report, *, markdown: bool) -> str:
    """Per candidate and concurrency the median round, then the behaviour over all rounds.

    ``req/s range`` spans the rounds; start-up and exit times are medians; a check shows
    every distinct outcome the rounds saw.
    """
    round_rates = rates(report.runs)
    ratios = {
        name: round_ratios(report.runs, name, REFERENCE)
        for name in dict.fromkeys(r.candidate for r in report.runs)
    }
    speed = [
        _speed_row(r, round_rates[key], ratios[r.candidate].get(r.concurrency, []))
        for key, r in median_runs(report.runs).items()
    ]
    by_candidate: dict[str, list[Behaviour]] = {}
    for b in report.behaviour:
        by_candidate.setdefault(b.candidate, []).append(b)
    behaviour = [_behaviour_row(rounds) for rounds in by_candidate.values()]
    return "\n\n".join(
        [
            describe_rounds(report.rounds, report.duration_s, report.warmup_s),
            format_table(SPEED_COLUMNS, speed, markdown=markdown),
            format_table(BEHAVIOUR_COLUMNS, behaviour, markdown=markdown),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the bake-off under the benchmark lock, print or write reports."""
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
    parser.add_argument(
        "--json", nargs="?", const="-", metavar="PATH", help="write the report as JSON (- : stdout)"
    )
    parser.add_argument(
        "--markdown",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write Markdown tables (- : stdout)",
    )
    parser.add_argument("--from-json", type=Path, help="re-print a saved --json report")
    args = parser.parse_args(argv)
    if args.from_json:
        report = msgspec.json.decode(args.from_json.read_bytes(), type=Report)
    elif not args.model.exists():
        parser.error(f"no model at {args.model}: python examples/build_iris.py --out ...")
    else:
        try:
            ensure_tools({"wrk": "wrk", "taskset": "util-linux"})
            with exclusive_machine():
                report = run(args)
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    renderers: list[tuple[str | None, Callable[[], str]]] = [
        (args.json, lambda: msgspec.json.format(msgspec.json.encode(report)).decode()),
        (args.markdown, lambda: format_report(report, markdown=True)),
    ]
    if "-" not in (args.json, args.markdown):
        print(format_report(report, markdown=False))
    for path, render in renderers:
        if path == "-":
            print(render())
        elif path is not None:
            Path(path).write_text(render() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
