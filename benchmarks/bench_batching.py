"""Dynamic batching: one ligeiro server with batching on, off, and queued without batching.

Four targets run the same command, ``ligeiro serve <repository> --workers 1 --threads 1
--grpc-port 0`` pinned to core 0, and differ only by ``--batch``:

- ``batched``: the model batches (``max_batch_size = 64``) on the event loop, which is
  what ``run_on = "auto"`` picks for a worker with one runtime thread;
- ``batched-thread``: the same, run on the model's own thread (``run_on=thread``);
- ``unbatched``: no batching, each request runs inline on the event loop;
- ``queued``: ``max_batch_size=1,run_on=thread``, each request queues and runs alone on
  the model's thread: the thread hop without the batching.

wrk loads each with one ``[1, N]`` FP32 row as V2 JSON (``--model mlp``: a digits row,
``--model iris``: the seed's flower, ``--model wide``: ``linspace(-1, 1, 256)``) from
core 1, in rounds with a rotated order, as ``bench_iris`` does (``_rounds.py``). Before
and after each measured run the model's Triton statistics (``GET /v2/models/<m>/stats``)
are read, so the table shows the mean batch size the run really had. It prints
throughput, latency, CPU per request, the throughput ratios to ``unbatched`` at each
concurrency, and the latency ratios at c=1.

``--model mlp`` (64 -> 2048 -> 2048 -> 10, ``examples/models``) is heavy enough for
batching to matter; ``--model wide`` (256 -> 4096 -> 4096 -> 16, float32 MatMul + Add +
Relu, about 72 MB of seeded random weights generated into a temporary repository by
``_models.build_mlp``, nothing downloaded) is memory-bound, so that one pass over the
weights serving many rows is where batching pays most; ``--model iris`` measures what
the hop to the model's thread costs a tiny model (docs/adr/0004-batching.md).

Run: ``python -m benchmarks.bench_batching [--model mlp|iris|wide] [--rounds 3] [--duration 5]
[--warmup 1] [--concurrency 1,16,64] [--servers batched,batched-thread,unbatched,queued]
[--json PATH] [--markdown PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._cases import CASES, ModelCase, verify
from ._harness import (
    HOST,
    JSON_HEADERS,
    LIGEIRO,
    LOAD_CORE,
    ROOT,
    WORK_DIR,
    BenchmarkError,
    HttpRequest,
    Machine,
    ServerProcess,
    add_duration_options,
    add_report_options,
    ensure_tools,
    exclusive_machine,
    format_table,
    free_port,
    http_call,
    int_list,
    machine_info,
    positive_int,
    publish_markdown,
    run_document,
    write_report,
)
from ._rounds import (
    RESULT_HEADERS,
    Rounds,
    Run,
    Spread,
    Startup,
    describe_rounds,
    expected_seconds,
    median_runs,
    ratio_cell,
    result_rows,
    rotated,
    round_ratios,
    spread_document,
)
from ._wrk import measure, run_wrk, wrk_seconds

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

PACKAGES: Final = ("ligeiro", "onnxruntime", "numpy", "msgspec", "uvloop", "httptools")
TARGET_NAMES: Final = ("batched", "batched-thread", "unbatched", "queued")
REFERENCE: Final = "unbatched"


def command(case: ModelCase, target: str, port: int, repository: Path) -> list[str]:
    """The ``ligeiro serve`` command line of one target."""
    argv = [
        LIGEIRO, "serve", str(repository), "--host", HOST, "--port", str(port),
        "--workers", "1", "--threads", "1", "--grpc-port", "0",
    ]  # fmt: skip
    if (batch := case.batch[target]) is not None:
        argv += ["--batch", f"{case.name}:{batch}"]
    return argv


@dataclass(frozen=True)
class Counts:
    """A model's cumulative Triton counters: rows inferred and model executions."""

    inferences: int
    executions: int


def read_counts(stats_url: str) -> Counts:
    """``inference_count`` and ``execution_count`` from ``GET /v2/models/<m>/stats``.

    Raises:
        BenchmarkError: the endpoint did not answer 200 with one model's statistics.
    """
    try:
        status, body = http_call(HttpRequest("GET", stats_url))
    except OSError as error:
        raise BenchmarkError(f"GET {stats_url} failed: {error}") from None
    try:
        if status != 200:
            raise ValueError(f"status {status}")
        stats = json.loads(body)["model_stats"][0]
        return Counts(int(stats["inference_count"]), int(stats["execution_count"]))
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise BenchmarkError(
            f"GET {stats_url}: no statistics ({error}): {body[:300].decode(errors='replace')}"
        ) from None


@dataclass(frozen=True)
class BatchSize:
    """The mean rows per model execution during one measured run."""

    target: str
    round: int
    concurrency: int
    inferences: int
    executions: int

    @property
    def mean(self) -> float:
        return self.inferences / self.executions if self.executions else float("nan")


@dataclass
class BatchingRounds(Rounds):
    """The record of a run (``_rounds.Rounds``), plus the batch sizes each run had."""

    batch_sizes: list[BatchSize] = field(default_factory=list)


@dataclass(frozen=True)
class LiveServer:
    """A started, checked target: its process, its request and its statistics URL."""

    name: str
    server: ServerProcess
    request: HttpRequest
    stats_url: str


def start_target(
    case: ModelCase,
    repository: Path,
    name: str,
    round_: int,
    options: argparse.Namespace,
    stack: contextlib.ExitStack,
) -> tuple[LiveServer, float]:
    """Start one target (stopped when ``stack`` closes) and check its answer.

    Raises:
        BenchmarkError: the server did not become ready, or answered wrongly.
    """
    port = free_port(HOST)
    base_url = f"http://{HOST}:{port}"
    request = HttpRequest(
        "POST",
        f"{base_url}/v2/models/{case.name}/infer",
        json.dumps(case.payload()).encode(),
        JSON_HEADERS,
    )
    server = stack.enter_context(
        ServerProcess(
            command(case, name, port, repository),
            f"{base_url}/v2/health/ready",
            log_path=WORK_DIR / "logs" / f"batching-{case.name}-{name}-{round_}.log",
            cwd=ROOT,
        )
    )
    print(f"round {round_}: starting {name}: {' '.join(server.argv)}", flush=True)
    try:
        startup_s = server.start(timeout_s=options.ready_timeout)
        verify(case, request)
    except BenchmarkError:
        server.stop()
        raise
    stats_url = f"{base_url}/v2/models/{case.name}/stats"
    return LiveServer(name, server, request, stats_url), startup_s


def measure_target(
    entry: LiveServer, connections: int, round_: int, options: argparse.Namespace
) -> tuple[Run, BatchSize]:
    """Warm up, then one measured run, with the statistics read around it (not the warm-up).

    Raises:
        BenchmarkError: wrk failed, the server died, or the statistics are unreadable.
    """
    if options.warmup > 0:
        run_wrk(entry.request, connections=connections, duration_s=options.warmup)
    before = read_counts(entry.stats_url)
    measurement = measure(
        entry.server,
        entry.request,
        connections=connections,
        duration_s=options.duration,
        warmup_s=0,
    )
    after = read_counts(entry.stats_url)
    batch = BatchSize(
        entry.name,
        round_,
        connections,
        after.inferences - before.inferences,
        after.executions - before.executions,
    )
    return Run(entry.name, round_, connections, measurement), batch


def run_round(
    round_index: int,
    case: ModelCase,
    repository: Path,
    options: argparse.Namespace,
    out: BatchingRounds,
) -> None:
    """One round: start every target, then load them back to back at each concurrency."""
    round_ = round_index + 1
    order = rotated(options.servers, round_index)
    with contextlib.ExitStack() as stack:
        live: dict[str, LiveServer] = {}
        for name in order:
            try:
                live[name], startup_s = start_target(case, repository, name, round_, options, stack)
            except BenchmarkError as error:
                out.fail(name, round_, error)
                continue
            out.startups.append(Startup(name, round_, startup_s))
        for connections in options.concurrency:
            for name in order:
                if (entry := live.get(name)) is None:
                    continue
                try:
                    run, batch = measure_target(entry, connections, round_, options)
                except BenchmarkError as error:
                    out.fail(name, round_, error)
                    live.pop(name).server.stop()
                    continue
                out.runs.append(run)
                out.batch_sizes.append(batch)
                print(
                    f"round {round_}: c={connections:<3} {name:<10} "
                    f"{run.requests_per_s:7.0f} req/s, p50 {run.measurement.load.p50_ms:6.2f} ms,"
                    f" mean batch {batch.mean:5.1f}",
                    flush=True,
                )


# --- ratios -------------------------------------------------------------------------------


def latency_ratios(runs: Sequence[Run], numerator: str, concurrency: int) -> dict[str, list[float]]:
    """At one concurrency, ``numerator``'s latency over ``unbatched``'s within each round.

    ``p50``: wrk's medians. ``mean``: with one connection in a closed loop the mean
    latency is the run's length over its requests, 1 / req/s, so the ratio of means is
    the inverse ratio of throughputs (exact at c=1 up to the client's own time between
    requests; only meaningful there).
    """
    by_round = {(run.round, run.candidate): run for run in runs if run.concurrency == concurrency}
    p50: list[float] = []
    mean: list[float] = []
    for (round_, candidate), run in by_round.items():
        if candidate != numerator or (reference := by_round.get((round_, REFERENCE))) is None:
            continue
        p50.append(run.measurement.load.p50_ms / reference.measurement.load.p50_ms)
        mean.append(reference.requests_per_s / run.requests_per_s)
    return {"p50": p50, "mean": mean} if p50 else {}


# --- reports ------------------------------------------------------------------------------


def batch_cells(
    measured: BatchingRounds, servers: Sequence[str], concurrency: Sequence[int]
) -> list[str]:
    """The mean batch size for each row of ``result_rows``, in the same order.

    Shown for the round with the median req/s, like the row's other numbers, with the
    range over rounds when they differ.
    """
    medians = {key: run.round for key, run in median_runs(measured.runs).items()}
    cells = []
    for name in servers:
        for connections in concurrency:
            sizes = {
                b.round: b.mean
                for b in measured.batch_sizes
                if (b.target, b.concurrency) == (name, connections)
            }
            round_ = medians.get((name, connections))
            if round_ is None or round_ not in sizes:
                cells.append("")
                continue
            spread = Spread.of(sizes.values())
            cell = f"{sizes[round_]:.1f}"
            if f"{spread.low:.1f}" != f"{spread.high:.1f}":
                cell += f" ({spread.range('.1f')})"
            cells.append(cell)
    return cells


def render(
    measured: BatchingRounds, case: ModelCase, options: argparse.Namespace, *, markdown: bool
) -> str:
    """The results table (with mean batch size), the ratio tables, and any failures."""
    servers, concurrency = options.servers, options.concurrency
    rows = result_rows(measured, servers, concurrency)
    headers = [*RESULT_HEADERS, "mean batch"]
    rows = [
        [*row, cell]
        for row, cell in zip(rows, batch_cells(measured, servers, concurrency), strict=True)
    ]
    parts = [
        f"model {case.name}; " + describe_rounds(options.rounds, options.duration, options.warmup),
        format_table(headers, rows, markdown=markdown),
    ]
    others = [name for name in servers if name != REFERENCE]
    if REFERENCE in servers and others:
        throughput = {name: round_ratios(measured.runs, name, REFERENCE) for name in others}
        parts.append(
            format_table(
                [f"req/s ratio to {REFERENCE}: median (range)", *(f"c={c}" for c in concurrency)],
                [
                    [name, *(ratio_cell(by_c.get(c, [])) for c in concurrency)]
                    for name, by_c in throughput.items()
                ],
                markdown=markdown,
            )
        )
        low = min(concurrency)
        latency = {name: latency_ratios(measured.runs, name, low) for name in others}
        parts.append(
            format_table(
                [f"latency ratio to {REFERENCE} at c={low}", "p50", "mean (1 / req/s)"],
                [
                    [name, ratio_cell(by.get("p50", [])), ratio_cell(by.get("mean", []))]
                    for name, by in latency.items()
                ],
                markdown=markdown,
            )
        )
    parts += [
        f"{f.target} failed in round {f.round}: {f.error.splitlines()[0]}"
        for f in measured.failures
    ]
    return "\n\n".join(parts)


def markdown_heading(machine: Machine, command_line: str, case: ModelCase, rounds: int) -> str:
    """The context a published table needs: command, machine, versions, date, method."""
    flags = ", ".join(
        f"`{name}`: " + (f"`--batch {case.name}:{batch}`" if batch else "its config.toml")
        for name, batch in case.batch.items()
    )
    return (
        f"Measured {machine.date} with `{command_line}` on {machine.summary()}. "
        f"Model `{case.name}`, one `[1, {len(case.row)}]` FP32 row as V2 JSON per request. "
        f"Each target is `ligeiro serve {case.repository} --workers 1 --threads 1` pinned to "
        f"core 0, differing only by `--batch` ({flags}); wrk runs on core 1. "
        f"In each of {rounds} round(s) every target is started and stays up, and at each "
        "concurrency the targets are loaded back to back, in an order rotated every round. "
        "Rows show the round with the median req/s; `mean batch` is that run's rows per "
        "model execution from `/v2/models/<m>/stats` (range over rounds in brackets); "
        "ratios are the median (and range) of the ratios measured within each round."
    )


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", choices=sorted(CASES), default="mlp", help="model to load (default mlp)"
    )
    parser.add_argument(
        "--concurrency",
        default="1,16,64",
        type=int_list,
        help="comma-separated connection counts (default 1,16,64); latency ratios use the lowest",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="repeat every measurement, rotating the target order; report medians (default 3)",
    )
    add_duration_options(parser)
    parser.add_argument(
        "--servers",
        default=",".join(TARGET_NAMES),
        type=lambda text: text.split(","),
        help=f"comma-separated subset of {','.join(TARGET_NAMES)}",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds a server may take to be ready"
    )
    add_report_options(parser)
    args = parser.parse_args(argv)
    if unknown := set(args.servers) - set(TARGET_NAMES):
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}; choose from {TARGET_NAMES}")
    return args


def _json_document(
    measured: BatchingRounds,
    case: ModelCase,
    options: argparse.Namespace,
    command_line: str,
    machine: Machine,
    repository: Path,
) -> dict[str, object]:
    """Every run of every round, the batch sizes, and each ratio's per-round values."""
    others = [name for name in options.servers if name != REFERENCE]
    low = min(options.concurrency)
    return {
        **run_document(f"batching-{case.name}", command_line, machine, options),
        "commands": {name: command(case, name, 0, repository) for name in options.servers},
        "runs": [dataclasses.asdict(run) for run in measured.runs],
        "batch_sizes": [{**dataclasses.asdict(b), "mean": b.mean} for b in measured.batch_sizes],
        "startups": [dataclasses.asdict(startup) for startup in measured.startups],
        "failures": [dataclasses.asdict(failure) for failure in measured.failures],
        "throughput_ratios": {
            f"{name} / {REFERENCE}": {
                str(c): spread_document(values)
                for c, values in round_ratios(measured.runs, name, REFERENCE).items()
            }
            for name in others
        },
        f"latency_ratios_c{low}": {
            f"{name} / {REFERENCE}": {
                kind: spread_document(values)
                for kind, values in latency_ratios(measured.runs, name, low).items()
            }
            for name in others
        },
    }


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m benchmarks.bench_batching"
) -> int:
    """Run the benchmark; return 1 when any target failed in any round."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command_line = " ".join([prog, *argv])
    options = parse_args(argv, prog)
    case = CASES[options.model]
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_batching needs two cores: one for the server, one for wrk")
    os.sched_setaffinity(0, {LOAD_CORE})
    measured = BatchingRounds()
    with exclusive_machine(), contextlib.ExitStack() as models:
        ensure_tools()
        repository = case.prepare(models)
        machine = machine_info((*PACKAGES, *case.packages))
        print(
            f"model {case.name}: {options.rounds} round(s) x {len(options.servers)} target(s) x "
            f"{len(options.concurrency)} concurrencies x ({options.warmup:g} s warm-up + "
            f"{wrk_seconds(options.duration)} s): expect about "
            f"{expected_seconds(options) / 60:.1f} min",
            flush=True,
        )
        started = time.monotonic()
        for round_index in range(options.rounds):
            run_round(round_index, case, repository, options, measured)
        print(f"done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    print("\n" + render(measured, case, options, markdown=False))
    heading = markdown_heading(machine, command_line, case, options.rounds)
    report = f"{heading}\n\n{render(measured, case, options, markdown=True)}\n"
    publish_markdown(report, options.markdown)
    if options.json:
        document = _json_document(measured, case, options, command_line, machine, repository)
        write_report(options.json, json.dumps(document, indent=2) + "\n")
    return 1 if measured.failures else 0


if __name__ == "__main__":
    sys.exit(main())
