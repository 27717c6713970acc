"""Overload: ten times the sustainable rate, open loop, and what the server does with it.

One ``ligeiro serve`` (pinned to core 0) serves the mlp model configured to be slow and
to push back early: ``--batch mlp:max_batch_size=1,max_queue_size=64`` (each request
runs alone, so each pays the whole model; at most 64 wait). The run:

1. measures the sustainable rate: wrk, closed loop, 16 connections, for
   ``--sustain-duration`` seconds after one of warm-up; 200s per second;
2. offers ``--factor`` (10) times that rate for ``--duration`` (30) seconds with the
   open-loop generator (``ligeiro.bench._openloop``) on core 1: one digits row per request, and
   every ``--deadline-every`` (10th) request with ``"parameters": {"timeout": 50000}``
   (50 ms in the queue at most), so the 504 path is exercised too;
3. meanwhile probes ``GET /v2/health/live`` every 100 ms on its own keep-alive connection
   and samples the server's resident memory (VmRSS of its process tree) every 0.5 s;
4. afterwards sends one ordinary request, which must succeed: the server recovered.

It prints the offered and achieved send rates, the answers by status with their
latencies, the health probes' latency, and RSS at start, peak and end. It exits 1 when
a request hung (no answer in 10 s), got a status other than 200, 429 or 504, or lost its
connection; when a health probe failed; when the server did not recover; or when the
generator sent less than 90 % of the scheduled requests, in which case the run did not
really offer the target rate and says so.

Run: ``python -m benchmarks.bench_overload [--factor 10] [--duration 30]
[--batch mlp:max_batch_size=1,max_queue_size=64] [--json PATH] [--markdown PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ligeiro.bench._openloop import percentile

from ._cases import CASES, verify
from ._harness import (
    HOST,
    JSON_HEADERS,
    LIGEIRO,
    LOAD_CORE,
    MODELS,
    ROOT,
    BenchmarkError,
    HttpRequest,
    Machine,
    ServerProcess,
    add_report_options,
    ensure_tools,
    exclusive_machine,
    format_table,
    free_port,
    machine_info,
    options_document,
    publish_markdown,
    write_report,
)
from ._procfs import tree_rss_bytes
from ._wrk import run_wrk

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

PACKAGES: Final = ("ligeiro", "onnxruntime", "numpy", "msgspec", "uvloop", "httptools")
HEALTH_PATH: Final = "/v2/health/live"
ACCEPTED: Final = frozenset({200, 429, 504})
MIN_SENT_SHARE: Final = 0.9
SUSTAIN_CONNECTIONS: Final = 16


@dataclass
class Samples:
    """What the side threads saw while the load ran."""

    health_ms: list[float] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (time.monotonic(), bytes)


def probe_health(port: int, stop: threading.Event, out: Samples, period_s: float = 0.1) -> None:
    """``GET /v2/health/live`` every ``period_s`` on one keep-alive connection.

    A probe that is late skips the ticks it missed rather than bunching up: the point is
    how long one probe waits, not how many are sent.
    """
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        try:
            connection.request("GET", HEALTH_PATH)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                out.health_failures.append(f"status {response.status}")
        except (OSError, http.client.HTTPException) as error:
            out.health_failures.append(f"{type(error).__name__}: {error}")
            connection.close()
            connection = http.client.HTTPConnection(HOST, port, timeout=10)
        else:
            out.health_ms.append((time.monotonic() - started) * 1e3)
        next_at += period_s
        now = time.monotonic()
        if next_at < now:
            next_at = now + period_s
        stop.wait(next_at - now)
    connection.close()


def sample_rss(pid: int, stop: threading.Event, out: Samples, period_s: float = 0.5) -> None:
    """Sample the server tree's VmRSS every ``period_s`` until ``stop`` is set."""
    while True:
        out.rss.append((time.monotonic(), tree_rss_bytes(pid)))
        if stop.wait(period_s):
            return


def sustainable_rate(request: HttpRequest, seconds: float) -> tuple[float, int]:
    """200s per second under a closed loop of 16 connections, and the non-2xx count.

    Raises:
        BenchmarkError: wrk failed.
    """
    run_wrk(request, connections=SUSTAIN_CONNECTIONS, duration_s=1)
    load = run_wrk(request, connections=SUSTAIN_CONNECTIONS, duration_s=seconds)
    return (load.requests - load.non_2xx) / load.duration_s, load.non_2xx


def open_loop(
    url: str,
    bodies: Sequence[tuple[Path, int]],
    options: argparse.Namespace,
    rate: float,
    out: Path,
) -> dict[str, object]:
    """Run ``ligeiro.bench._openloop`` as its own process on the load core; return its summary.

    A process of its own keeps the generator's event loop clear of this process's probe
    and sampler threads (and of their GIL).

    Raises:
        BenchmarkError: the generator failed.
    """
    command = [
        "taskset", "-c", str(LOAD_CORE), sys.executable, "-m", "ligeiro.bench._openloop", url,
        "--rate", f"{rate:.1f}", "--duration", str(options.duration),
        "--connections", str(options.connections), "--timeout", str(options.client_timeout),
        "--json", str(out),
    ]  # fmt: skip
    for path, weight in bodies:
        command += ["--body", f"{path}:{weight}"]
    done = subprocess.run(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        timeout=options.duration + options.client_timeout + 60,
    )
    if done.returncode != 0:
        raise BenchmarkError(
            f"the open-loop generator failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    summary: dict[str, object] = json.loads(out.read_text())
    return summary


@dataclass(frozen=True)
class Outcome:
    """One overload run: the rates, the generator's summary, the side samples."""

    sustainable_per_s: float
    sustain_non_2xx: int
    target_per_s: float
    load: dict[str, object]
    samples: Samples
    recovered: str  # "" when the request after the load got its 200, else what went wrong

    def count(self, key: str) -> int:
        value = self.load[key]
        assert isinstance(value, int)
        return value

    @property
    def answered(self) -> dict[int, int]:
        answered = self.load["answered"]
        assert isinstance(answered, dict)
        return {int(status): int(n) for status, n in answered.items()}

    @property
    def sent_share(self) -> float:
        scheduled = self.count("scheduled")
        return self.count("sent") / scheduled if scheduled else 0.0

    def problems(self) -> list[str]:
        """Why the run fails the acceptance, or why its numbers cannot be trusted."""
        out = []
        if self.sent_share < MIN_SENT_SHARE:
            out.append(
                f"the generator sent only {self.sent_share:.1%} of the scheduled requests "
                f"({self.count('not_sent')} found no free connection): the server was not "
                f"really offered {self.target_per_s:,.0f} req/s, so this run proves nothing"
            )
        if hung := self.count("hung"):
            out.append(f"{hung} request(s) hung: no answer within the client timeout")
        if errors := self.count("errors"):
            out.append(f"{errors} request(s) lost their connection before an answer")
        if other := {s: n for s, n in self.answered.items() if s not in ACCEPTED}:
            out.append(f"statuses other than 200/429/504: {other}")
        if failures := self.samples.health_failures:
            out.append(f"{len(failures)} health probe(s) failed, first: {failures[0]}")
        if self.recovered:
            out.append(f"after the load, an ordinary request failed: {self.recovered}")
        return out


def _ms(value: object) -> str:
    return f"{value:,.1f}" if isinstance(value, float) and value == value else "-"


def render(outcome: Outcome, options: argparse.Namespace, *, markdown: bool) -> str:
    """The offered-load table, the answers table and the server table."""
    load = outcome.load
    duration_s = float(options.duration)
    sent = outcome.count("sent")
    cpu_s = load["client_cpu_s"]
    assert isinstance(cpu_s, float)
    offered = [
        ["sustainable (closed loop, c=16, 200s only)", f"{outcome.sustainable_per_s:,.0f} req/s"],
        [f"target (x{options.factor:g})", f"{outcome.target_per_s:,.0f} req/s"],
        ["scheduled", f"{outcome.count('scheduled'):,} in {duration_s:g} s"],
        ["sent", f"{sent:,} ({outcome.sent_share:.1%}), {sent / duration_s:,.0f} req/s"],
        ["not sent: no free connection", f"{outcome.count('not_sent'):,}"],
        ["connections opened (limit)",
         f"{outcome.count('connections_opened')} ({options.connections})"],
        ["send lag p99 / max ms", _lag(load)],
        ["generator CPU", f"{cpu_s / duration_s:.0%} of core {LOAD_CORE}"],
    ]  # fmt: skip
    latency = load["latency_ms"]
    assert isinstance(latency, dict)
    answers = []
    for status in sorted(ACCEPTED | set(outcome.answered)):
        n = outcome.answered.get(status, 0)
        stats = latency.get(str(status), {})
        answers.append([
            str(status), f"{n:,}", f"{n / max(sent, 1):.1%}", f"{n / duration_s:,.0f}",
            _ms(stats.get("p50")), _ms(stats.get("p99")), _ms(stats.get("max")),
        ])  # fmt: skip
    for label, key in (
        (f"hung (no answer in {options.client_timeout:g} s)", "hung"),
        ("connection lost", "errors"),
    ):
        n = outcome.count(key)
        answers.append([label, f"{n:,}", f"{n / max(sent, 1):.1%}", "", "", "", ""])
    health = outcome.samples.health_ms
    failed = len(outcome.samples.health_failures)
    health_ms = " / ".join(
        _ms(value)
        for value in (percentile(health, 0.5), percentile(health, 0.99), max(health, default=None))
    )
    rss = [b / 2**20 for _, b in outcome.samples.rss]
    server = [
        ["health probes (every 100 ms)", f"{len(health)} answered, {failed} failed"],
        ["health latency p50 / p99 / max ms", health_ms],
        ["RSS MiB start / peak / end",
         f"{rss[0]:.1f} / {max(rss):.1f} / {rss[-1]:.1f}" if rss else "-"],
        ["after the load", outcome.recovered or "200 to an ordinary request"],
    ]  # fmt: skip
    answer_headers = ["answer", "count", "share of sent", "per s", "p50 ms", "p99 ms", "max ms"]
    return "\n\n".join([
        format_table(["offered load", "value"], offered, markdown=markdown),
        format_table(answer_headers, answers, markdown=markdown),
        format_table(["server", "value"], server, markdown=markdown),
    ])  # fmt: skip


def _lag(load: dict[str, object]) -> str:
    lag = load["send_lag_ms"]
    assert isinstance(lag, dict)
    return f"{_ms(lag['p99'])} / {_ms(lag['max'])}"


def markdown_heading(machine: Machine, command_line: str, server_argv: Sequence[str]) -> str:
    return (
        f"Measured {machine.date} with `{command_line}` on {machine.summary()}. "
        f"Server: `{' '.join(server_argv)}` pinned to core 0. The open-loop generator "
        "(`ligeiro.bench._openloop`, the engine of `ligeiro bench --rate`; uvloop, "
        "keep-alive HTTP/1.1, one request per connection at a time) runs on core 1 "
        "beside the health prober and the RSS sampler. Latencies "
        "run from each request's scheduled send time."
    )


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=float, default=10.0, help="x the sustainable rate (10)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of overload (30)")
    parser.add_argument(
        "--sustain-duration",
        type=float,
        default=5.0,
        help="seconds to measure the sustainable rate",
    )
    parser.add_argument(
        "--batch",
        default="mlp:max_batch_size=1,max_queue_size=64",
        help="the server's --batch option (default mlp:max_batch_size=1,max_queue_size=64)",
    )
    parser.add_argument(
        "--deadline-us", type=int, default=50_000, help="V2 timeout parameter (50000)"
    )
    parser.add_argument(
        "--deadline-every", type=int, default=10, help="every Nth request carries it (10; 0: none)"
    )
    parser.add_argument("--connections", type=int, default=512, help="generator's pool limit (512)")
    parser.add_argument("--client-timeout", type=float, default=10.0, help="seconds before 'hung'")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    add_report_options(parser)
    return parser.parse_args(argv)


def run(options: argparse.Namespace, server_argv: list[str], port: int, folder: Path) -> Outcome:
    """Start the server, measure the sustainable rate, overload it, and check recovery.

    Raises:
        BenchmarkError: the server did not start, answered wrongly, or a tool failed.
    """
    case = CASES["mlp"]
    base_url = f"http://{HOST}:{port}"
    url = f"{base_url}/v2/models/{case.name}/infer"
    payload = case.payload()
    body = json.dumps(payload).encode()
    request = HttpRequest("POST", url, body, JSON_HEADERS)
    bodies = [(folder / "row.json", 1)]
    bodies[0][0].write_bytes(body)
    if options.deadline_every > 0:
        deadline = folder / "row-deadline.json"
        deadline.write_text(json.dumps({**payload, "parameters": {"timeout": options.deadline_us}}))
        bodies = [(bodies[0][0], options.deadline_every - 1), (deadline, 1)]
    log_path = ROOT / ".bench" / "logs" / "overload.log"
    with ServerProcess(
        server_argv, f"{base_url}/v2/health/ready", log_path=log_path, cwd=ROOT
    ) as server:
        print(f"starting: {' '.join(server.argv)}", flush=True)
        server.start(timeout_s=options.ready_timeout)
        verify(case, request)
        sustainable, non_2xx = sustainable_rate(request, options.sustain_duration)
        target = sustainable * options.factor
        print(
            f"sustainable: {sustainable:,.0f} req/s (closed loop, c={SUSTAIN_CONNECTIONS}, "
            f"{non_2xx} non-2xx); offering {target:,.0f} req/s for {options.duration:g} s",
            flush=True,
        )
        samples, stop = Samples(), threading.Event()
        threads = [
            threading.Thread(target=probe_health, args=(port, stop, samples), daemon=True),
            threading.Thread(target=sample_rss, args=(server.pid, stop, samples), daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            load = open_loop(url, bodies, options, target, folder / "load.json")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        samples.rss.append((time.monotonic(), tree_rss_bytes(server.pid)))
        server.check_running()
        recovered = ""
        try:
            verify(case, request)
        except BenchmarkError as error:
            recovered = str(error).splitlines()[0]
    return Outcome(sustainable, non_2xx, target, load, samples, recovered)


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m benchmarks.bench_overload"
) -> int:
    """Run the overload test; 0 when every acceptance check held and the rate was honest."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command_line = " ".join([prog, *argv])
    options = parse_args(argv, prog)
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_overload needs two cores: one for the server, one for the load")
    os.sched_setaffinity(0, {LOAD_CORE})
    port = free_port(HOST)
    server_argv = [
        LIGEIRO, "serve", str(MODELS), "--host", HOST,
        "--port", str(port), "--workers", "1", "--threads", "1", "--grpc-port", "0",
        "--batch", options.batch,
    ]  # fmt: skip
    with exclusive_machine(), tempfile.TemporaryDirectory(prefix="ligeiro-overload-") as folder:
        ensure_tools()
        # Builds examples/models/mlp when missing; the repository is examples/models.
        CASES["mlp"].prepare(contextlib.ExitStack())
        machine = machine_info(PACKAGES)
        outcome = run(options, server_argv, port, Path(folder))
    problems = outcome.problems()
    verdict = "\n".join(f"FAIL: {p}" for p in problems) or (
        "PASS: every request got 200, 429 or 504; none hung; health answered throughout"
    )
    print("\n" + render(outcome, options, markdown=False) + "\n\n" + verdict)
    report = (
        f"{markdown_heading(machine, command_line, server_argv)}\n\n"
        f"{render(outcome, options, markdown=True)}\n\n{verdict}\n"
    )
    publish_markdown(report, options.markdown)
    if options.json:
        document = {
            "benchmark": "overload",
            "command": command_line,
            "server": server_argv,
            "machine": dataclasses.asdict(machine),
            "options": options_document(options),
            "sustainable_per_s": outcome.sustainable_per_s,
            "target_per_s": outcome.target_per_s,
            "load": outcome.load,
            "health_ms": {
                "count": len(outcome.samples.health_ms),
                "failures": outcome.samples.health_failures,
                "p50": percentile(outcome.samples.health_ms, 0.5),
                "p99": percentile(outcome.samples.health_ms, 0.99),
                "max": max(outcome.samples.health_ms, default=None),
                "mean": statistics.fmean(outcome.samples.health_ms)
                if outcome.samples.health_ms
                else None,
            },
            "rss_bytes": [  # (seconds since the load started, bytes)
                (round(t - outcome.samples.rss[0][0], 3), b) for t, b in outcome.samples.rss
            ],
            "recovered": outcome.recovered or "ok",
            "problems": problems,
        }
        write_report(options.json, json.dumps(document, indent=2) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
