"""Text: ligeiro's sentiment pipeline beside seed 002's FastAPI server, in rounds.

Seed 002 served a transformer text classifier with FastAPI + ONNX Runtime + HF
tokenizers (``POST /age`` ``{"inputs": "I love you. I like you. I am your friend."}``)
and loaded it with ``hey -n 1000``. This runs that server (``baselines/fastapi_text.py``:
one tokenize and one run per request) and ligeiro serving the ``sentiment`` pipeline
(tokenizer → MiniLM encoder → logistic-regression head, with dynamic batching) on the
same model files, each as one process with one ONNX Runtime thread on core 0, and loads
them from core 1 with:

- wrk at ``--concurrency`` connections (default 1 and 32), ``--duration`` seconds each;
- ``hey -n 1000 -c 50``, the seed's tool (its ``-c`` default) and request count.

It also times the work itself in process (tokenize + encoder + head for the seed's
sentence, one ORT thread, on core 0): the floor a server's c=1 latency can approach. The
issue's acceptance is printed at the end: ligeiro at least 3x the seed-style server's
req/s at c=32 and under hey's c=50, with a lower p99, and ligeiro's c=1 p50 at most 1.1x
the in-process time.

Rounds and ratios work as in ``bench_iris`` (``_rounds.py``): every round starts both
servers, then loads them back to back, in an order rotated each round.

Run: ``python -m benchmarks.bench_text [--rounds 3] [--duration 5] [--warmup 1]
[--concurrency 1,32] [--hey-requests 1000] [--hey-concurrency 50]
[--servers fastapi-text,ligeiro-sentiment,ligeiro-sentiment-int8] [--json PATH]
[--markdown PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ._harness import (
    LOAD_CORE,
    MODELS,
    ROOT,
    SERVER_CORE,
    BenchmarkError,
    HttpRequest,
    ServerProcess,
    add_report_options,
    ensure_tools,
    exclusive_machine,
    format_table,
    int_list,
    machine_info,
    positive_int,
    publish_markdown,
    run_document,
    write_report,
)
from ._rounds import Run, Spread, describe_rounds, median_runs, ratio_cell, rotated, round_ratios
from ._targets import Target, ligeiro_command, start_targets, uvicorn_command
from ._wrk import LoadResult, Measurement, measure, measure_load

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

BUILD_SCRIPT: Final = ROOT / "examples" / "build_text.py"
BUILT: Final = MODELS / "minilm-int8" / "config.toml"  # written last by the build
SENTENCE: Final = "I love you. I like you. I am your friend."
PAYLOAD: Final = {"inputs": SENTENCE}
EXPECTED_LABEL: Final = "positive"
PACKAGES: Final = (
    "ligeiro", "onnxruntime", "tokenizers", "numpy", "msgspec", "uvloop", "httptools",
    "fastapi", "starlette", "pydantic", "uvicorn",
)  # fmt: skip
# The acceptance: throughput at least this much the baseline's under load, and
# ligeiro's c=1 p50 within this much of the in-process time.
MIN_SPEEDUP: Final = 3.0
ACCEPTANCE_TARGET: Final = "ligeiro-sentiment"
MAX_C1_OVER_IN_PROCESS: Final = 1.1
IN_PROCESS_RUNS: Final = 300


def targets() -> dict[str, Target]:
    """The seed-style baseline and ligeiro's friendly endpoint, by name."""
    # One ONNX Runtime thread, as the baseline: both have one core.
    ligeiro = (*ligeiro_command(MODELS), "--threads", "1")  # the text models
    expected = f"label {EXPECTED_LABEL!r}"
    all_targets = (
        Target("fastapi-text", uvicorn_command("fastapi_text"), "/health", "/age", PAYLOAD,
               names_label, is_baseline=True, env={"TEXT_MODELS": str(MODELS)},
               expected=expected),
        Target("ligeiro-sentiment", ligeiro, "/v2/health/ready",
               "/v1/models/sentiment:predict", PAYLOAD, names_label, is_baseline=False,
               expected=expected),
        # The int8 encoder (``ligeiro optimize``): not the baseline's model, so no verdict;
        # what the optimizer adds on top of batching.
        Target("ligeiro-sentiment-int8", ligeiro, "/v2/health/ready",
               "/v1/models/sentiment-int8:predict", PAYLOAD, names_label, is_baseline=False,
               by_default=False, expected=expected),
    )  # fmt: skip
    return {target.name: target for target in all_targets}


def ensure_models() -> None:
    """Build the text models when missing (``make bench`` has built them already)."""
    if BUILT.exists():
        return
    command = [sys.executable, str(BUILD_SCRIPT), "--out", str(MODELS)]
    print(f"building the text models: {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def names_label(answer: object) -> bool:
    """The answer's ``label`` is the seed sentence's class."""
    return isinstance(answer, dict) and answer.get("label") == EXPECTED_LABEL


# --- in process -----------------------------------------------------------------------------


class InProcess:
    """Tokenize + encoder + head for the seed sentence in this process, timed on core 0.

    The tokenizer is the ``text-tokenizer`` model's own ``model.py``; the two ONNX models
    run in plain ONNX Runtime sessions with one intra-op thread: the work every server
    must do for one request, without any server around it. It is timed in every round,
    beside the servers' c=1 runs, because the shared machine's speed drifts between
    minutes.
    """

    def __init__(self) -> None:
        import numpy as np
        import onnxruntime as ort

        version = MODELS / "text-tokenizer" / "1"
        spec = importlib.util.spec_from_file_location("bench_text_tokenizer", version / "model.py")
        if spec is None or spec.loader is None:
            raise BenchmarkError(f"cannot import {version / 'model.py'}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self._tokenizer = module.Model(version, {"max_length": 256, "max_chars": 10_000})
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._encoder = ort.InferenceSession(
            str(MODELS / "minilm-encoder" / "1" / "model.onnx"), options, ["CPUExecutionProvider"]
        )
        self._head = ort.InferenceSession(
            str(MODELS / "sentiment-head" / "1" / "model.onnx"), options, ["CPUExecutionProvider"]
        )
        self._text = np.array([SENTENCE], dtype=object)

    def _once(self) -> None:
        feeds = self._tokenizer.predict({"text": self._text})
        (embedding,) = self._encoder.run(["sentence_embedding"], feeds)
        self._head.run(None, {"sentence_embedding": embedding})

    def time(self, runs: int = IN_PROCESS_RUNS) -> tuple[float, float]:
        """Median and p99 ms over ``runs`` runs after 20 warm-up runs, on the server core."""
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {SERVER_CORE})
        try:
            for _ in range(20):
                self._once()
            timings = []
            for _ in range(runs):
                start = time.perf_counter_ns()
                self._once()
                timings.append((time.perf_counter_ns() - start) / 1e6)
        finally:
            os.sched_setaffinity(0, affinity)
        timings.sort()
        return statistics.median(timings), timings[min(runs - 1, int(0.99 * runs))]


# --- hey ------------------------------------------------------------------------------------

_HEY_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_HEY_TOTAL = re.compile(r"Total:\s+([\d.]+) secs")
_HEY_PERCENTILE = re.compile(r"^\s*(\d+)% in ([\d.]+) secs", re.MULTILINE)
_HEY_STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses", re.MULTILINE)
_HEY_ERRORS = re.compile(r"^\s*\[(\d+)\]\s+(?!\d+ responses)", re.MULTILINE)


def parse_hey(output: str, connections: int) -> LoadResult:
    """Throughput, latency percentiles and errors from hey's summary.

    Raises:
        BenchmarkError: the output lacks a field (hey failed, or its format changed).
    """
    rate, total = _HEY_RATE.search(output), _HEY_TOTAL.search(output)
    percentiles = {
        int(match[1]): float(match[2]) * 1e3 for match in _HEY_PERCENTILE.finditer(output)
    }
    if rate is None or total is None or not {50, 90, 99} <= percentiles.keys():
        raise BenchmarkError(f"cannot read hey's output:\n{output}")
    statuses = {int(code): int(count) for code, count in _HEY_STATUS.findall(output)}
    errors_section = output.split("Error distribution:", 1)
    socket_errors = (
        sum(int(count) for count in _HEY_ERRORS.findall(errors_section[1]))
        if len(errors_section) == 2
        else 0
    )
    return LoadResult(
        connections=connections,
        duration_s=float(total[1]),
        requests=sum(statuses.values()),
        requests_per_s=float(rate[1]),
        p50_ms=percentiles[50],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        non_2xx=sum(count for code, count in statuses.items() if not 200 <= code < 400),
        socket_errors=socket_errors,
    )


def run_hey(request: HttpRequest, *, requests: int, connections: int) -> LoadResult:
    """``hey -n REQUESTS -c CONNECTIONS`` with the request's body, pinned to the load core.

    Raises:
        BenchmarkError: hey failed or printed something unreadable.
    """
    command = [
        "taskset", "-c", str(LOAD_CORE),
        "hey", "-n", str(requests), "-c", str(connections), "-m", request.method,
        "-T", "application/json", "-d", request.body.decode(), request.url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise BenchmarkError(f"hey exited with {done.returncode}: {done.stderr or done.stdout}")
    return parse_hey(done.stdout, connections)


def measure_hey(
    server: ServerProcess, request: HttpRequest, *, requests: int, connections: int
) -> Measurement:
    """One hey run and what it cost the server (no warm-up: wrk's runs came first)."""
    return measure_load(
        server, lambda: run_hey(request, requests=requests, connections=connections)
    )


# --- rounds ---------------------------------------------------------------------------------


@dataclass
class Rounds:
    """Everything a run measured: wrk runs and hey runs (``Run.concurrency`` is -c)."""

    wrk: list[Run] = field(default_factory=list)
    hey: list[Run] = field(default_factory=list)
    # Per round: the in-process p50 and p99 ms, timed while the servers sit idle.
    in_process: dict[int, tuple[float, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, target: str, round_: int, error: BenchmarkError) -> None:
        self.failures.append(f"{target} failed in round {round_}: {str(error).splitlines()[0]}")
        print(f"round {round_}: {target} FAILED: {error}", flush=True)


def run_round(
    round_index: int,
    selected: Sequence[Target],
    options: argparse.Namespace,
    in_process: InProcess,
    out: Rounds,
) -> None:
    """Start every target, time the work in process, then run each load on every target."""
    round_ = round_index + 1
    order = rotated(selected, round_index)
    with contextlib.ExitStack() as stack:
        started = start_targets(order, round_, options, stack, out.fail)
        live = {name: entry for name, (entry, _) in started.items()}
        out.in_process[round_] = p50, p99 = in_process.time()
        print(f"round {round_}: in process p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
        loads: list[tuple[str, int, Callable[[ServerProcess, HttpRequest], Measurement]]] = [
            (
                "wrk",
                c,
                lambda server, request, c=c: measure(
                    server,
                    request,
                    connections=c,
                    duration_s=options.duration,
                    warmup_s=options.warmup,
                ),
            )
            for c in options.concurrency
        ]
        loads.append(
            (
                "hey",
                options.hey_concurrency,
                lambda server, request: measure_hey(
                    server,
                    request,
                    requests=options.hey_requests,
                    connections=options.hey_concurrency,
                ),
            )
        )
        for tool, connections, run in loads:
            for target in order:
                if (entry := live.get(target.name)) is None:
                    continue
                try:
                    measurement = run(entry.server, entry.request)
                except BenchmarkError as error:
                    out.fail(target.name, round_, error)
                    live.pop(target.name).server.stop()
                    continue
                getattr(out, tool).append(Run(target.name, round_, connections, measurement))
                load = measurement.load
                print(
                    f"round {round_}: {tool} c={connections:<3} {target.name:<18} "
                    f"{load.requests_per_s:7.1f} req/s  p50 {load.p50_ms:7.2f} ms  "
                    f"p99 {load.p99_ms:7.2f} ms",
                    flush=True,
                )


# --- reports --------------------------------------------------------------------------------

RESULT_HEADERS: Final = (
    "server", "load", "req/s", "req/s range", "p50 ms", "p90 ms", "p99 ms",
    "CPU µs/req", "peak RSS MiB", "errors",
)  # fmt: skip


def _load_name(tool: str, connections: int, options: argparse.Namespace) -> str:
    if tool == "hey":
        return f"hey -n {options.hey_requests} -c {connections}"
    return f"wrk c={connections}"


def _groups(measured: Rounds) -> list[tuple[str, list[Run]]]:
    return [("wrk", measured.wrk), ("hey", measured.hey)]


def result_rows(measured: Rounds, options: argparse.Namespace) -> list[list[str]]:
    """One row per target and load, from the round with the median req/s."""
    rows = []
    for name in options.servers:
        for tool, runs in _groups(measured):
            for (candidate, connections), run in median_runs(runs).items():
                if candidate != name:
                    continue
                every = [r for r in runs if (r.candidate, r.concurrency) == (name, connections)]
                load = run.measurement.load
                errors = sum(r.measurement.load.non_2xx + r.measurement.load.socket_errors
                             for r in every)  # fmt: skip
                rows.append([
                    name, _load_name(tool, connections, options), f"{load.requests_per_s:,.1f}",
                    Spread.of(r.requests_per_s for r in every).range(",.1f"),
                    f"{load.p50_ms:.2f}", f"{load.p90_ms:.2f}", f"{load.p99_ms:.2f}",
                    f"{run.measurement.cpu_us_per_request:.0f}",
                    f"{max(r.measurement.peak_rss_mib for r in every):.1f}", str(errors),
                ])  # fmt: skip
    return rows


def _p99_ratios(runs: Sequence[Run], mine: str, baseline: str) -> dict[int, list[float]]:
    """Per concurrency, the baseline's p99 over ligeiro's within each round."""
    p99 = {(r.round, r.candidate, r.concurrency): r.measurement.load.p99_ms for r in runs}
    out: dict[int, list[float]] = {}
    for (round_, candidate, connections), value in p99.items():
        theirs = p99.get((round_, baseline, connections))
        if candidate == mine and theirs and value:
            out.setdefault(connections, []).append(theirs / value)
    return out


@dataclass(frozen=True)
class Verdict:
    """One acceptance criterion: what was measured and whether it holds."""

    criterion: str
    measured: str
    holds: bool


def verdicts(
    measured: Rounds, options: argparse.Namespace
) -> tuple[list[list[str]], list[Verdict]]:
    """The ratio rows (each ligeiro target over the baseline) and the issue's acceptance.

    The acceptance is judged on ``ACCEPTANCE_TARGET`` only: the same model as the
    baseline's. Other ligeiro targets (the int8 encoder) get ratio rows, no verdict.
    """
    all_targets = targets()
    baseline = next((n for n in options.servers if all_targets[n].is_baseline), None)
    rows: list[list[str]] = []
    checks: list[Verdict] = []
    for mine in (n for n in options.servers if not all_targets[n].is_baseline):
        judged = mine == ACCEPTANCE_TARGET
        for tool, runs in _groups(measured) if baseline is not None else ():
            speedups = round_ratios(runs, mine, baseline)
            p99s = _p99_ratios(runs, mine, baseline)
            for connections in sorted(speedups):
                load = _load_name(tool, connections, options)
                rows.append([
                    f"{mine}, {load}", ratio_cell(speedups[connections]),
                    ratio_cell(p99s.get(connections, [])),
                ])  # fmt: skip
                if connections < 2 or not judged:
                    continue
                speedup = Spread.of(speedups[connections]).median
                checks.append(Verdict(
                    f"{load}: req/s at least {MIN_SPEEDUP:g}x the baseline's",
                    f"{speedup:.2f}x", speedup >= MIN_SPEEDUP,
                ))  # fmt: skip
                p99_ratio = Spread.of(p99s.get(connections) or [0.0]).median
                checks.append(Verdict(
                    f"{load}: p99 lower than the baseline's",
                    f"baseline p99 / ligeiro p99 = {p99_ratio:.2f}x", p99_ratio > 1.0,
                ))  # fmt: skip
        c1_ratios = [
            run.measurement.load.p50_ms / measured.in_process[run.round][0]
            for run in measured.wrk
            if (run.candidate, run.concurrency) == (mine, 1) and run.round in measured.in_process
        ]
        if c1_ratios and judged:
            checks.append(Verdict(
                f"wrk c=1: p50 at most {MAX_C1_OVER_IN_PROCESS:g}x the in-process time",
                f"{ratio_cell(c1_ratios)} (p50 over in-process p50, per round)",
                Spread.of(c1_ratios).median <= MAX_C1_OVER_IN_PROCESS,
            ))  # fmt: skip
    return rows, checks


def render(measured: Rounds, options: argparse.Namespace, *, markdown: bool) -> str:
    ratio_rows, checks = verdicts(measured, options)
    p50s = Spread.of(p50 for p50, _ in measured.in_process.values() or [(0.0, 0.0)])
    p99s = Spread.of(p99 for _, p99 in measured.in_process.values() or [(0.0, 0.0)])
    parts = [
        describe_rounds(options.rounds, options.duration, options.warmup)
        + f"; hey sends {options.hey_requests} requests per round",
        format_table(RESULT_HEADERS, result_rows(measured, options), markdown=markdown),
        f"in process (tokenize + encoder + head, one ORT thread, core 0, {IN_PROCESS_RUNS} "
        f"runs per round): p50 {p50s.median:.2f} ms ({p50s.range('.2f')}), "
        f"p99 {p99s.median:.2f} ms ({p99s.range('.2f')})",
    ]
    if ratio_rows:
        headers = ["over the baseline", "req/s: median (range)", "baseline p99 / ligeiro p99"]
        parts.append(format_table(headers, ratio_rows, markdown=markdown))
    if checks:
        parts.append(
            format_table(
                ["acceptance (issue 6)", "measured", "holds"],
                [[c.criterion, c.measured, "yes" if c.holds else "NO"] for c in checks],
                markdown=markdown,
            )
        )
    parts += measured.failures
    return "\n\n".join(parts)


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    every = list(targets())
    names = [name for name, target in targets().items() if target.by_default]
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency",
        default="1,32",
        type=int_list,
        help="comma-separated wrk connection counts (default 1,32)",
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each wrk run")
    parser.add_argument("--hey-requests", type=positive_int, default=1000, help="hey -n")
    parser.add_argument("--hey-concurrency", type=positive_int, default=50, help="hey -c")
    parser.add_argument(
        "--servers",
        default=",".join(names),
        type=lambda text: text.split(","),
        help=f"comma-separated subset of {','.join(every)} (default {','.join(names)})",
    )
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    add_report_options(parser)
    args = parser.parse_args(argv)
    if unknown := set(args.servers) - set(every):
        parser.error(f"unknown server(s) {', '.join(sorted(unknown))}; choose from {every}")
    return args


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m benchmarks.bench_text"
) -> int:
    """Run the benchmark; 1 when a server failed (a benchmark checks speed, not behaviour:
    an acceptance that does not hold is printed, not an error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([prog, *argv])
    options = parse_args(argv, prog)
    all_targets = targets()
    selected = [all_targets[name] for name in options.servers]
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_text needs two cores: one for the servers, one for the load")
    os.sched_setaffinity(0, {LOAD_CORE})
    measured = Rounds()
    with exclusive_machine():
        ensure_tools()
        ensure_models()
        machine = machine_info(PACKAGES)
        in_process = InProcess()
        started = time.monotonic()
        for round_index in range(options.rounds):
            run_round(round_index, selected, options, in_process, measured)
        print(f"done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    print("\n" + render(measured, options, markdown=False))
    heading = (
        f"Measured {machine.date} with `{command}` on {machine.summary()}. Each server is one "
        "process with one ONNX Runtime thread pinned to core 0; wrk and hey run on core 1. "
        "Rows show the round with the median req/s; ratios are the median (and range) of "
        "the ratios measured within each round."
    )
    report = f"{heading}\n\n{render(measured, options, markdown=True)}\n"
    publish_markdown(report, options.markdown)
    _, checks = verdicts(measured, options)
    if options.json:
        document = {
            **run_document("text", command, machine, options),
            "in_process_ms": {
                str(round_): {"p50": p50, "p99": p99}
                for round_, (p50, p99) in measured.in_process.items()
            },
            "wrk": [dataclasses.asdict(run) for run in measured.wrk],
            "hey": [dataclasses.asdict(run) for run in measured.hey],
            "acceptance": [dataclasses.asdict(check) for check in checks],
            "failures": measured.failures,
        }
        write_report(options.json, json.dumps(document, indent=2) + "\n")
    return 1 if measured.failures else 0


if __name__ == "__main__":
    sys.exit(main())
