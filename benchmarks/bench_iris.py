"""Iris end to end: ligeiro beside the seed article's two FastAPI servers, in rounds.

The seed article (003) served one sklearn pipeline three ways and compared them under
load. This runs its two Python servers (FastAPI + pickle, FastAPI + ONNX Runtime), the
raw Python floor (``baselines/raw_floor.py``: uvloop + httptools + orjson + ONNX Runtime,
no protocol) and ligeiro on the same model, each as one process on core 0 with wrk on core 1, and prints
throughput, latency, CPU per request, peak memory, start-up time and ligeiro's
throughput ratio to each baseline.

The machine is shared and noisy (the same server measured 7,001 req/s in one run and
3,925 in the next), so the run is made of rounds (``--rounds``, default 3). Each round
starts every server, one after another, and keeps them all up; then, for each
concurrency, loads them back to back, so that a ratio compares runs seconds apart. The
order rotates every round. Rows show the round with the median req/s and the range; a
ratio is the median over rounds of the ratio measured within one round (``_rounds.py``).

Every server's answer to the payload is checked once before it is loaded, so a server
that answers errors fast is never mistaken for a fast server.

Run: ``python -m benchmarks.bench_iris [--rounds 3] [--duration 5] [--warmup 1]
[--concurrency 1,16,64] [--servers ligeiro-v2,fastapi-onnx] [--json PATH]
[--markdown PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._harness import (
    LOAD_CORE,
    BenchmarkError,
    HttpRequest,
    Machine,
    ServerProcess,
    ensure_tools,
    exclusive_machine,
    format_table,
    free_port,
    http_call,
    machine_info,
    measure,
    write_report,
    wrk_seconds,
)
from ._rounds import Run, Spread, describe_rounds, median_runs, ratio_cell, rotated, round_ratios

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

ROOT: Final = Path(__file__).resolve().parent.parent
WORK_DIR: Final = ROOT / ".bench"
MODELS: Final = ROOT / "examples" / "models"
ONNX_MODEL: Final = MODELS / "iris" / "1" / "model.onnx"
PICKLE: Final = WORK_DIR / "iris.joblib"
# ligeiro serves a repository holding iris alone (a link to examples/models/iris), so its
# memory and start-up are one model's, as the baselines' are.
IRIS_REPOSITORY: Final = WORK_DIR / "iris-repository"
BUILD_SCRIPT: Final = ROOT / "examples" / "build_iris.py"
HOST: Final = "127.0.0.1"
JSON_HEADERS: Final = {"Content-Type": "application/json"}
PACKAGES: Final = (
    "ligeiro", "onnxruntime", "numpy", "msgspec", "uvloop", "httptools", "granian",
    "fastapi", "starlette", "pydantic", "uvicorn", "scikit-learn", "joblib",
)  # fmt: skip

# The seed's payload: an Iris setosa from the dataset's first row, so every server must
# answer class 0 / "iris-setosa".
SEED_PAYLOAD: Final = {
    "sepal_length": 5.1,
    "sepal_width": 3.5,
    "petal_length": 1.4,
    "petal_width": 0.2,
}
V2_PAYLOAD: Final = {
    "inputs": [
        {"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}
EXPECTED_LABEL: Final = "iris-setosa"
OTHER_LABELS: Final = frozenset({"iris-versicolor", "iris-virginica"})


def _string_values(document: object) -> list[str]:
    """Every string value (not key) in a decoded JSON document."""
    if isinstance(document, str):
        return [document]
    if isinstance(document, dict):
        document = list(document.values())
    if isinstance(document, list):
        return [text for item in document for text in _string_values(item)]
    return []


def names_setosa(answer: object) -> bool:
    """The answer names iris-setosa and no other class as a value.

    Class names may also appear as keys of a probability map; only values count, so
    the check does not depend on how a server lays out its probabilities.
    """
    values = set(_string_values(answer))
    return EXPECTED_LABEL in values and not values & OTHER_LABELS


def v2_predicts_class_0(answer: object) -> bool:
    """The V2 response's ``output_label`` tensor holds class 0."""
    outputs = answer.get("outputs", []) if isinstance(answer, dict) else []
    return any(
        output.get("name") == "output_label" and output.get("data", [None])[0] == 0
        for output in outputs
        if isinstance(output, dict)
    )


@dataclass(frozen=True)
class Target:
    """A server command and the request that loads it: one group of rows in the table."""

    name: str
    command: tuple[str, ...]  # "{port}" is replaced by the port the server must bind
    ready_path: str
    path: str
    payload: Mapping[str, object]
    is_expected: Callable[[object], bool]
    is_baseline: bool
    env: Mapping[str, str] = field(default_factory=dict)
    # Part of the default run; the others only when named in --servers.
    by_default: bool = True
    # Its cost is shown as a ratio to this other ligeiro target (same server, one change).
    compared_to: str | None = None
    # What a right answer names, for the error when it does not.
    expected: str = f"{EXPECTED_LABEL} (class 0)"


_ONE_WORKER: Final = ("--host", HOST, "--port", "{port}", "--workers", "1")


def _uvicorn(module: str) -> tuple[str, ...]:
    """The baseline run as a user would: the uvicorn CLI with its defaults, one worker."""
    return (sys.executable, "-m", "uvicorn", f"benchmarks.baselines.{module}:app", *_ONE_WORKER)


def _ligeiro() -> tuple[str, ...]:
    """ligeiro's own CLI from the same virtual environment, one worker.

    gRPC stays on, as by default (its memory counts), on a free port: the two ligeiro
    targets run at once and would otherwise both want 8001.
    """
    executable = str(Path(sys.executable).with_name("ligeiro"))
    return (executable, "serve", str(IRIS_REPOSITORY), *_ONE_WORKER, "--grpc-port", "0")


def _raw_floor() -> tuple[str, ...]:
    """The Python floor (uvloop + httptools + orjson + ONNX Runtime, no protocol)."""
    return (sys.executable, "-m", "benchmarks.baselines.raw_floor", "--host", HOST,
            "--port", "{port}")  # fmt: skip


def targets() -> dict[str, Target]:
    """The five default targets (and the opt-in ones) by name, in the order they run."""
    all_targets = (
        Target("fastapi-pickle", _uvicorn("fastapi_pickle"), "/health", "/predict",
               SEED_PAYLOAD, names_setosa, is_baseline=True, env={"IRIS_PICKLE": str(PICKLE)}),
        Target("fastapi-onnx", _uvicorn("fastapi_onnx"), "/health", "/predict",
               SEED_PAYLOAD, names_setosa, is_baseline=True, env={"IRIS_ONNX": str(ONNX_MODEL)}),
        # What ligeiro's V2 and :predict paths are held to (issue 16: 0.7x and 0.6x).
        Target("raw-floor", _raw_floor(), "/health", "/v2/models/iris/infer",
               V2_PAYLOAD, v2_predicts_class_0, is_baseline=True,
               env={"IRIS_ONNX": str(ONNX_MODEL)}),
        Target("ligeiro-v2", _ligeiro(), "/v2/health/ready", "/v2/models/iris/infer",
               V2_PAYLOAD, v2_predicts_class_0, is_baseline=False),
        Target("ligeiro-predict", _ligeiro(), "/v2/health/ready", "/v1/models/iris:predict",
               SEED_PAYLOAD, names_setosa, is_baseline=False),
        # The access log on (to a file), to measure what it costs: --servers
        # ligeiro-v2,ligeiro-v2-access-log.
        Target("ligeiro-v2-access-log", _ligeiro(), "/v2/health/ready", "/v2/models/iris/infer",
               V2_PAYLOAD, v2_predicts_class_0, is_baseline=False,
               env={"LIGEIRO_ACCESS_LOG": str(WORK_DIR / "access-log.jsonl")},
               by_default=False, compared_to="ligeiro-v2"),
    )  # fmt: skip
    return {target.name: target for target in all_targets}


def ensure_models() -> None:
    """Link the iris-only repository, and build the ONNX model and the baseline's pickle
    when missing or older than the script.

    When the ONNX model already exists, the pickle is built beside a throw-away copy
    under ``.bench/`` rather than rewriting ``examples/models`` under a running server.
    The training is seeded, so the two hold the same fitted pipeline: the ONNX bytes
    differ between builds, but labels and probabilities agree with the pickle's.
    """
    link = IRIS_REPOSITORY / "iris"
    if not link.is_symlink():
        IRIS_REPOSITORY.mkdir(parents=True, exist_ok=True)
        link.symlink_to(MODELS / "iris", target_is_directory=True)
    is_fresh = PICKLE.exists() and PICKLE.stat().st_mtime >= BUILD_SCRIPT.stat().st_mtime
    if ONNX_MODEL.exists() and is_fresh:
        return
    out = WORK_DIR / "models" if ONNX_MODEL.exists() else MODELS
    command = [sys.executable, str(BUILD_SCRIPT), "--out", str(out), "--pickle", str(PICKLE)]
    print(f"building the iris model: {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def verify(target: Target, request: HttpRequest) -> None:
    """Send the payload once and check the answer, so errors are never benchmarked.

    Raises:
        BenchmarkError: no answer, a non-200 status, or not the expected class.
    """
    try:
        status, body = http_call(request, timeout_s=30)  # a first call may warm a model up
        answer = json.loads(body)
    except (OSError, ValueError) as error:
        raise BenchmarkError(f"{request.method} {request.url} failed: {error}") from None
    if status != 200 or not target.is_expected(answer):
        raise BenchmarkError(
            f"{request.method} {request.url}: expected 200 naming {target.expected}, "
            f"got {status}: {body[:300].decode(errors='replace')}"
        )


@dataclass(frozen=True)
class Startup:
    """Seconds from launching a target's command to its first ready 200, in one round."""

    target: str
    round: int
    seconds: float


@dataclass(frozen=True)
class Failure:
    """A target that could not start, answered wrongly, or died, in one round."""

    target: str
    round: int
    error: str


@dataclass
class Rounds:
    """Everything a run measured, round by round."""

    runs: list[Run] = field(default_factory=list)
    startups: list[Startup] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def fail(self, target: str, round_: int, error: BenchmarkError) -> None:
        self.failures.append(Failure(target, round_, str(error)))
        print(f"round {round_}: {target} FAILED: {error}", flush=True)


@dataclass(frozen=True)
class LiveServer:
    """A started, checked target and the request that loads it."""

    target: Target
    server: ServerProcess
    request: HttpRequest


def start_target(
    target: Target, round_: int, options: argparse.Namespace, stack: contextlib.ExitStack
) -> tuple[LiveServer, float]:
    """Start the target's server (stopped when ``stack`` closes) and check its answer.

    Returns:
        The live server and its start-up time in seconds.

    Raises:
        BenchmarkError: the server did not become ready, or answered wrongly.
    """
    port = free_port(HOST)
    base_url = f"http://{HOST}:{port}"
    request = HttpRequest(
        "POST", base_url + target.path, json.dumps(target.payload).encode(), JSON_HEADERS
    )
    server = stack.enter_context(
        ServerProcess(
            [argument.format(port=port) for argument in target.command],
            base_url + target.ready_path,
            log_path=WORK_DIR / "logs" / f"{target.name}-{round_}.log",
            cwd=ROOT,
            env=target.env,
        )
    )
    print(f"round {round_}: starting {target.name}: {' '.join(server.argv)}", flush=True)
    try:
        startup_s = server.start(timeout_s=options.ready_timeout)
        verify(target, request)
    except BenchmarkError:
        server.stop()  # now, not at the end of the round: it is left out of this round
        raise
    return LiveServer(target, server, request), startup_s


def run_round(
    round_index: int, selected: Sequence[Target], options: argparse.Namespace, out: Rounds
) -> None:
    """One round: start every target, then load them back to back at each concurrency.

    All targets stay up for the whole round, pinned to core 0 with the others idle beside
    them: an idle server costs memory, not CPU, and keeping it up lets the targets take
    turns within seconds at each concurrency. They start one after another, so each
    start-up has the core to itself. A target that fails is stopped and skipped for the
    rest of the round; the others go on.
    """
    round_ = round_index + 1
    order = rotated(selected, round_index)
    with contextlib.ExitStack() as stack:
        live: dict[str, LiveServer] = {}
        for target in order:
            try:
                live[target.name], startup_s = start_target(target, round_, options, stack)
            except BenchmarkError as error:
                out.fail(target.name, round_, error)
                continue
            out.startups.append(Startup(target.name, round_, startup_s))
        for connections in options.concurrency:
            for target in order:
                if (entry := live.get(target.name)) is None:
                    continue
                try:
                    measurement = measure(
                        entry.server,
                        entry.request,
                        connections=connections,
                        duration_s=options.duration,
                        warmup_s=options.warmup,
                    )
                except BenchmarkError as error:
                    out.fail(target.name, round_, error)
                    live.pop(target.name).server.stop()
                    continue
                out.runs.append(Run(target.name, round_, connections, measurement))
                print(
                    f"round {round_}: c={connections:<3} {target.name:<16} "
                    f"{measurement.load.requests_per_s:7.0f} req/s",
                    flush=True,
                )


# Seconds per wrk call beyond its -d (process start, connect, report), and per server
# start (imports, model load, the check), for the time estimate printed before a run.
_WRK_OVERHEAD_S: Final = 0.1
_START_OVERHEAD_S: Final = 1.5


def expected_seconds(options: argparse.Namespace) -> float:
    """Roughly how long a run with these options takes."""
    warmup_s = wrk_seconds(options.warmup) if options.warmup > 0 else 0
    per_run_s = warmup_s + wrk_seconds(options.duration) + _WRK_OVERHEAD_S * (1 + (warmup_s > 0))
    per_server_s = len(options.concurrency) * per_run_s + _START_OVERHEAD_S
    return float(options.rounds * len(options.servers) * per_server_s)


# --- reports ------------------------------------------------------------------------------

RESULT_HEADERS: Final = (
    "server", "c", "req/s", "req/s range", "p50 ms", "p90 ms", "p99 ms",
    "CPU µs/req", "peak RSS MiB", "start-up s", "errors",
)  # fmt: skip


def result_rows(
    measured: Rounds, servers: Sequence[str], concurrency: Sequence[int]
) -> list[list[str]]:
    """One row per target and concurrency, from the round with the median req/s.

    ``req/s range`` spans the rounds; ``peak RSS`` is the highest any round reached by
    then; ``errors`` adds up every round; start-up (median over rounds) is on each
    target's first row.
    """
    medians = median_runs(measured.runs)
    rows = []
    for name in servers:
        startups = [s.seconds for s in measured.startups if s.target == name]
        startup = f"{statistics.median(startups):.2f}" if startups else ""
        for connections in concurrency:
            if (run := medians.get((name, connections))) is None:
                rows.append([name, str(connections), "failed", *[""] * (len(RESULT_HEADERS) - 3)])
                continue
            loads = [
                r for r in measured.runs if (r.candidate, r.concurrency) == (name, connections)
            ]
            peak_rss_mib = max(r.measurement.peak_rss_mib for r in loads)
            errors = sum(
                r.measurement.load.non_2xx + r.measurement.load.socket_errors for r in loads
            )
            load = run.measurement.load
            rows.append([
                name, str(connections), f"{load.requests_per_s:,.0f}",
                Spread.of(r.requests_per_s for r in loads).range(",.0f"),
                f"{load.p50_ms:.2f}", f"{load.p90_ms:.2f}", f"{load.p99_ms:.2f}",
                f"{run.measurement.cpu_us_per_request:.0f}",
                f"{peak_rss_mib:.1f}", startup, str(errors),
            ])  # fmt: skip
            startup = ""
    return rows


def throughput_ratios(
    measured: Rounds, servers: Sequence[str], all_targets: Mapping[str, Target]
) -> dict[str, dict[int, list[float]]]:
    """Per ligeiro target and baseline, per concurrency, the ratio of req/s in each round."""
    ours = [name for name in servers if not all_targets[name].is_baseline]
    theirs = [name for name in servers if all_targets[name].is_baseline]
    ratios = {
        f"{mine} / {baseline}": round_ratios(measured.runs, mine, baseline)
        for mine in ours
        for baseline in theirs
    }
    for mine in ours:
        other = all_targets[mine].compared_to
        if other is not None and other in servers:
            ratios[f"{mine} / {other}"] = round_ratios(measured.runs, mine, other)
    return ratios


def render(
    measured: Rounds,
    ratios: Mapping[str, Mapping[int, list[float]]],
    options: argparse.Namespace,
    *,
    markdown: bool,
) -> str:
    """The results table, the ratio table, and any failures, as text or Markdown."""
    parts = [
        describe_rounds(options.rounds, options.duration, options.warmup),
        format_table(
            RESULT_HEADERS,
            result_rows(measured, options.servers, options.concurrency),
            markdown=markdown,
        ),
    ]
    if ratios:
        headers = ["req/s ratio: median (range)", *(f"c={c}" for c in options.concurrency)]
        rows = [
            [pair, *(ratio_cell(by_c.get(c, [])) for c in options.concurrency)]
            for pair, by_c in ratios.items()
        ]
        parts.append(format_table(headers, rows, markdown=markdown))
    parts += [
        f"{f.target} failed in round {f.round}: {f.error.splitlines()[0]}"
        for f in measured.failures
    ]
    return "\n\n".join(parts)


def markdown_heading(machine: Machine, command: str, rounds: int) -> str:
    """The context a published table needs: command, machine, versions, date, method."""
    return (
        f"Measured {machine.date} with `{command}` on {machine.summary()}. "
        "Each server is one process pinned to core 0; wrk runs on core 1. "
        f"In each of {rounds} round(s) every server is started and stays up, and at each "
        "concurrency the servers are loaded back to back, in an order rotated every round. "
        "Rows show the round with the median req/s; ratios are the median (and range) of "
        "the ratios measured within each round."
    )


def _ratio_document(ratios: Mapping[str, Mapping[int, list[float]]]) -> dict[str, object]:
    """Ratios for the JSON report: each round's, plus their median and range."""
    return {
        pair: {
            str(c): {**dataclasses.asdict(Spread.of(values)), "rounds": values}
            for c, values in by_c.items()
        }
        for pair, by_c in ratios.items()
    }


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    names = [name for name, target in targets().items() if target.by_default]
    every = list(targets())
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency",
        default="1,16,64",
        type=lambda text: [int(c) for c in text.split(",")],
        help="comma-separated connection counts (default 1,16,64)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        help="repeat every measurement, rotating the server order; report medians (default 3)",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of load before each run (default 1)"
    )
    parser.add_argument(
        "--servers",
        default=",".join(names),
        type=lambda text: text.split(","),
        help=f"comma-separated subset of {','.join(every)} (default {','.join(names)})",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds a server may take to become ready",
    )
    parser.add_argument("--json", type=Path, help="write every number and the machine here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown report here")
    args = parser.parse_args(argv)
    if unknown := set(args.servers) - set(every):
        parser.error(f"unknown server(s) {', '.join(sorted(unknown))}; choose from {every}")
    return args


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "python -m benchmarks.bench_iris",
    report_stem: Path | None = None,
) -> int:
    """Run the benchmark; return 1 when any target failed in any round, so a smoke run notices.

    Args:
        argv: the command-line arguments (default ``sys.argv[1:]``).
        prog: how the user invoked it, recorded with the results.
        report_stem: write ``<stem>.json`` and ``<stem>.md`` unless ``--json`` or
            ``--markdown`` name other paths.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([prog, *argv])
    options = parse_args(argv, prog)
    if report_stem is not None:
        options.json = options.json or report_stem.with_suffix(".json")
        options.markdown = options.markdown or report_stem.with_suffix(".md")
    all_targets = targets()
    selected = [all_targets[name] for name in options.servers]
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_iris needs two cores: one for the server, one for wrk")
    # This process only waits on wrk; keep it off the server's core too.
    os.sched_setaffinity(0, {LOAD_CORE})
    measured = Rounds()
    with exclusive_machine():
        ensure_tools()
        ensure_models()
        machine = machine_info(PACKAGES)
        print(
            f"{options.rounds} round(s) x {len(selected)} server(s) x "
            f"{len(options.concurrency)} concurrencies x ({options.warmup:g} s warm-up + "
            f"{options.duration:g} s): expect about {expected_seconds(options) / 60:.1f} min",
            flush=True,
        )
        started = time.monotonic()
        for round_index in range(options.rounds):
            run_round(round_index, selected, options, measured)
        print(f"done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    ratios = throughput_ratios(measured, options.servers, all_targets)
    print("\n" + render(measured, ratios, options, markdown=False))
    tables = render(measured, ratios, options, markdown=True)
    report = f"{markdown_heading(machine, command, options.rounds)}\n\n{tables}\n"
    print(f"\nMarkdown (for docs/benchmarks.md):\n\n{report}")
    if options.markdown:
        write_report(options.markdown, report)
    if options.json:
        document = {
            "benchmark": "iris",
            "command": command,
            "machine": dataclasses.asdict(machine),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
            "runs": [dataclasses.asdict(run) for run in measured.runs],
            "startups": [dataclasses.asdict(startup) for startup in measured.startups],
            "failures": [dataclasses.asdict(failure) for failure in measured.failures],
            "ratios": _ratio_document(ratios),
        }
        write_report(options.json, json.dumps(document, indent=2) + "\n")
    return 1 if measured.failures else 0


if __name__ == "__main__":
    sys.exit(main())
