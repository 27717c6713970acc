"""``bench_workers``' run: the configurations it measures, what it keeps, and its report.

The memory part serves the generated model (``BIG_MODEL``) and iris with each of
``MEMORY_WORKERS`` workers and each weight layout (``MEMORY_CONFIGS``); the scaling part
runs both ``LAYOUTS`` on each of ``SCALING_MODELS``. ``Results`` holds every round's
``MemoryRun``, ``RestartRun`` and load ``Run``; ``render`` turns them into the tables
(memory, start-up and restart, scaling) with the issue's memory bar met or not.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ._harness import LOAD_CORE, Machine, format_table
from ._iris import V2_PAYLOAD, v2_predicts_class_0
from ._rounds import Run, Spread, describe_rounds, median_runs, ratio_cell, round_ratios

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence

    from ._procfs import ProcessMemory

__all__ = [
    "BIG_MODEL",
    "KIB_PER_MIB",
    "LAYOUTS",
    "MEMORY_CONFIGS",
    "MEMORY_WORKERS",
    "RESTART_WORKERS",
    "SCALING_MODELS",
    "Layout",
    "MemoryRun",
    "RestartRun",
    "Results",
    "growth",
    "markdown_heading",
    "render",
    "scaling_ratios",
]

KIB_PER_MIB: Final = 1024

# --- what is measured ---------------------------------------------------------------------

BIG_MODEL: Final = "big"  # the generated model's name in its repository
MEMORY_WORKERS: Final = (1, 2, 4)
RESTART_WORKERS: Final = 2
# (model, threads): the generated model shared and per worker; iris alone, shared, shows
# what a worker costs with (almost) no weights: the floor under the growth per worker.
MEMORY_CONFIGS: Final = ((BIG_MODEL, 1), (BIG_MODEL, 2), ("iris", 1))


@dataclass(frozen=True)
class Layout:
    """How many workers, and which CPUs the server and wrk may use."""

    name: str
    workers: int
    server_cpus: str
    wrk_cpus: str


LAYOUTS: Final = (
    Layout("1 worker", 1, "0", str(LOAD_CORE)),
    Layout("2 workers", 2, "0-1", "0-1"),  # no free core: wrk shares both with the server
)
MLP_PAYLOAD: Final = {
    "inputs": [
        {
            "name": "float_input",
            "shape": [1, 64],
            "datatype": "FP32",
            "data": [float(v % 17) for v in range(64)],
        }
    ]
}


def answers_mlp(answer: object) -> bool:
    """The V2 response holds one ``output_label`` between 0 and 9."""
    outputs = answer.get("outputs", []) if isinstance(answer, dict) else []
    return any(
        isinstance(o, dict)
        and o.get("name") == "output_label"
        and o.get("data", [-1])[0] in range(10)
        for o in outputs
    )


SCALING_MODELS: Final[dict[str, tuple[Mapping[str, object], Callable[[object], bool]]]] = {
    "iris": (V2_PAYLOAD, v2_predicts_class_0),
    "mlp": (MLP_PAYLOAD, answers_mlp),
}


# --- what a run keeps -----------------------------------------------------------------


@dataclass(frozen=True)
class MemoryRun:
    """One server configuration's memory after every worker ran the model, in one round."""

    model: str  # "big" (the generated model) or "iris" (the per-process floor)
    round: int
    threads: int
    workers: int
    processes: list[ProcessMemory]
    distinct_mib: float | None  # resident pages of all the processes, each counted once
    first_ready_s: float  # launch to the first 200 from /v2/health/ready
    all_ready_s: float  # launch to the log line saying every worker listens
    worker_cpu_s: list[float]  # each worker's CPU during the warm-up requests (0: never ran)

    @property
    def pss_mib(self) -> float:
        return sum(p.pss_kib for p in self.processes) / KIB_PER_MIB

    @property
    def rss_mib(self) -> float:
        return sum(p.rss_kib for p in self.processes) / KIB_PER_MIB

    def uss_mib(self, role: str) -> list[float]:
        return [p.uss_kib / KIB_PER_MIB for p in self.processes if p.role == role]


@dataclass(frozen=True)
class RestartRun:
    """A worker killed with SIGKILL and replaced, timed from the kill, in one round."""

    round: int
    threads: int
    logged_s: float  # the supervisor logs "... exited with -9; restarting"
    forked_s: float  # a new child process exists
    listening_s: float  # N sockets listen on the HTTP port again (the kernel queues to it)
    serving_s: float  # N sockets listen on the gRPC port again: the HTTP loop runs
    pss_after_mib: float  # PSS total after the new worker has run the model
    distinct_after_mib: float | None


@dataclass
class Results:
    model_bytes: int = 0
    memory: list[MemoryRun] = field(default_factory=list)
    restarts: list[RestartRun] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)



# --- the report ---------------------------------------------------------------------------


def _weights(threads: int) -> str:
    return "shared (fork)" if threads == 1 else "per worker"


def _median_round(runs: Sequence[MemoryRun]) -> MemoryRun:
    """The round with the median PSS total (the lower middle one when even)."""
    return sorted(runs, key=lambda run: run.pss_mib)[(len(runs) - 1) // 2]


def _pss(run: MemoryRun) -> float | None:
    return run.pss_mib


def _distinct(run: MemoryRun) -> float | None:
    return run.distinct_mib


def growth(
    results: Results,
    threads: int,
    model: str = BIG_MODEL,
    metric: Callable[[MemoryRun], float | None] = _pss,
) -> dict[int, list[float]]:
    """Per N > 1, per round: (metric(N) - metric(1)) / (N - 1), in MiB (PSS by default)."""
    totals = {
        (m.round, m.workers): metric(m)
        for m in results.memory
        if (m.model, m.threads) == (model, threads)
    }
    out: dict[int, list[float]] = {}
    for (round_, workers), total in sorted(totals.items()):
        one = totals.get((round_, 1))
        if workers > 1 and total is not None and one is not None:
            out.setdefault(workers, []).append((total - one) / (workers - 1))
    return out


def _growth_cells(per_round: list[float] | None, model_mib: float | None) -> list[str]:
    """The median growth per extra worker in MiB, and as a fraction of the model."""
    if not per_round:
        return ["-", "-"]
    extra = statistics.median(per_round)
    return [f"{extra:.1f}", f"{extra / model_mib:.2f}" if model_mib else "-"]


MEMORY_HEADERS: Final = (
    "model", "weights", "workers", "RSS total MiB", "PSS total MiB", "PSS range",
    "distinct MiB", "USS/worker MiB", "supervisor USS MiB", "PSS growth/worker MiB",
    "x model", "distinct growth/worker MiB", "x model",
)  # fmt: skip


def _uss_cell(uss: Sequence[float]) -> str:
    """The mean USS of the workers, with their range when there are several."""
    mean = f"{statistics.mean(uss):.1f}"
    return f"{mean} ({min(uss):.0f}-{max(uss):.0f})" if len(uss) > 1 else mean


def memory_rows(results: Results) -> list[list[str]]:
    model_mib = results.model_bytes / 2**20
    rows = []
    for model, threads in MEMORY_CONFIGS:
        grown = growth(results, threads, model)
        grown_distinct = growth(results, threads, model, _distinct)
        for workers in MEMORY_WORKERS:
            runs = [
                m
                for m in results.memory
                if (m.model, m.threads, m.workers) == (model, threads, workers)
            ]
            if not runs:
                continue
            run = _median_round(runs)
            uss = run.uss_mib("worker") or run.uss_mib("single")
            supervisor = run.uss_mib("supervisor")
            of_model = model_mib if model == BIG_MODEL else None
            rows.append([
                model, _weights(threads), str(workers), f"{run.rss_mib:.1f}",
                f"{run.pss_mib:.1f}", Spread.of(m.pss_mib for m in runs).range(".0f"),
                f"{run.distinct_mib:.1f}" if run.distinct_mib is not None else "-",
                _uss_cell(uss), f"{supervisor[0]:.1f}" if supervisor else "-",
                *_growth_cells(grown.get(workers), of_model),
                *_growth_cells(grown_distinct.get(workers), of_model),
            ])  # fmt: skip
    return rows


TIMING_HEADERS: Final = (
    "weights (2 workers)", "first ready s", "all workers ready s", "restart: logged s",
    "restart: forked s", "restart: listening s", "restart: serving s",
    "PSS after restart MiB", "distinct after restart MiB",
)  # fmt: skip


def _median_range(values: Sequence[float], spec: str = ".2f") -> str:
    if not values:
        return "-"
    spread = Spread.of(values)
    median = f"{spread.median:{spec}}"
    return f"{median} ({spread.range(spec)})" if len(values) > 1 else median


def timing_rows(results: Results) -> list[list[str]]:
    rows = []
    for threads in (1, 2):
        starts = [
            m
            for m in results.memory
            if (m.model, m.threads, m.workers) == (BIG_MODEL, threads, RESTART_WORKERS)
        ]
        restarts = [r for r in results.restarts if r.threads == threads]
        rows.append([
            _weights(threads),
            _median_range([m.first_ready_s for m in starts]),
            _median_range([m.all_ready_s for m in starts]),
            _median_range([r.logged_s for r in restarts]),
            _median_range([r.forked_s for r in restarts]),
            _median_range([r.listening_s for r in restarts]),
            _median_range([r.serving_s for r in restarts]),
            _median_range([r.pss_after_mib for r in restarts], ".0f"),
            _median_range(
                [r.distinct_after_mib for r in restarts if r.distinct_after_mib is not None],
                ".0f",
            ),
        ])  # fmt: skip
    return rows


SCALING_HEADERS: Final = (
    "model", "layout", "c", "req/s", "req/s range", "p50 ms", "p99 ms", "CPU µs/req", "errors",
)  # fmt: skip


def scaling_rows(results: Results, concurrency: Sequence[int]) -> list[list[str]]:
    medians = median_runs(results.runs)
    rows = []
    for model in SCALING_MODELS:
        for layout in LAYOUTS:
            name = f"{model}, {layout.name}"
            for c in concurrency:
                if (run := medians.get((name, c))) is None:
                    continue
                loads = [r for r in results.runs if (r.candidate, r.concurrency) == (name, c)]
                load = run.measurement.load
                errors = sum(
                    r.measurement.load.non_2xx + r.measurement.load.socket_errors for r in loads
                )
                rows.append([
                    model, layout.name, str(c), f"{load.requests_per_s:,.0f}",
                    Spread.of(r.requests_per_s for r in loads).range(",.0f"),
                    f"{load.p50_ms:.2f}", f"{load.p99_ms:.2f}",
                    f"{run.measurement.cpu_us_per_request:.0f}", str(errors),
                ])  # fmt: skip
    return rows


def scaling_ratios(results: Results) -> dict[str, dict[int, list[float]]]:
    return {
        model: round_ratios(results.runs, f"{model}, 2 workers", f"{model}, 1 worker")
        for model in SCALING_MODELS
    }


def verdict(results: Results) -> str:
    """The issue's memory bar, met or not, per N, by PSS and by distinct pages."""
    if not results.model_bytes:
        return "memory bar: not measured"
    model_mib = results.model_bytes / 2**20
    lines = [
        f"Memory bar: growth per extra worker <= 0.3 x {model_mib:.1f} MiB = "
        f"{0.3 * model_mib:.1f} MiB, shared weights (median over rounds):"
    ]
    for name, metric in (("PSS", _pss), ("distinct pages", _distinct)):
        for workers, values in growth(results, 1, BIG_MODEL, metric).items():
            extra = statistics.median(values)
            floor = growth(results, 1, "iris", metric).get(workers)
            floor_text = f"; iris alone {statistics.median(floor):.1f} MiB" if floor else ""
            met = "met" if extra <= 0.3 * model_mib else "NOT met"
            lines.append(
                f"- {name}, N={workers}: {extra:.1f} MiB = {extra / model_mib:.2f}x: "
                f"{met}{floor_text}"
            )
    return "\n".join(lines)


SCALING_NOTE: Final = (
    "Pinning: 1 worker runs on core 0 with wrk on core 1; 2 workers run on cores 0-1 with "
    "wrk on cores 0-1 as well (there is no free core on this 2-core machine), so wrk takes "
    "CPU from the servers in the 2-worker runs only. This is not the setting of the "
    "'>= 0.85 x N' scaling target, which needs a machine with many more cores than workers "
    "and the load generated elsewhere."
)


def render(results: Results, options: argparse.Namespace, *, markdown: bool) -> str:
    model_mib = results.model_bytes / 2**20
    ratios = scaling_ratios(results)
    ratio_rows = [
        [model, *(ratio_cell(by_c.get(c, [])) for c in options.concurrency)]
        for model, by_c in ratios.items()
    ]
    parts = [
        f"Memory: a generated MLP with {results.model_bytes / 1e6:.1f} MB ({model_mib:.1f} MiB) "
        f"of float32 weights, {options.rounds} round(s), median-PSS round shown. PSS counts a "
        "page shared by k processes as 1/k in each, including processes outside the "
        "server that map the same libraries, so it drifts with whatever else runs; "
        "'distinct' counts every physical page of the server's processes once "
        "(/proc/PID/pagemap). USS is a process's private pages. Growth per extra worker "
        "= (total(N) - total(1)) / (N - 1); for N >= 2 the supervisor counts too. iris "
        "alone (shared) shows what a worker costs without weights.",
        format_table(MEMORY_HEADERS, memory_rows(results), markdown=markdown),
        verdict(results),
        "Start-up and restart, 2 workers, pinned to cores 0-1: median (range) over rounds, "
        "seconds from launching the command (start-up) or from the SIGKILL (restart). "
        "'listening': N sockets listen on the HTTP port again, so the kernel queues "
        "connections to the new worker; 'serving': N listen on the gRPC port again, which a "
        "worker opens after its HTTP server runs, so the new worker answers.",
        format_table(TIMING_HEADERS, timing_rows(results), markdown=markdown),
        "Scaling: "
        + describe_rounds(options.rounds, options.duration, options.warmup)
        + "; mlp with batching off. "
        + SCALING_NOTE,
        format_table(
            SCALING_HEADERS, scaling_rows(results, options.concurrency), markdown=markdown
        ),
        format_table(
            ["req/s ratio 2 workers / 1 worker", *(f"c={c}" for c in options.concurrency)],
            ratio_rows,
            markdown=markdown,
        ),
    ]
    parts += [f"failure: {failure.splitlines()[0]}" for failure in results.failures]
    return "\n\n".join(parts)


def markdown_heading(machine: Machine, command: str) -> str:
    return f"Measured {machine.date} with `{command}` on {machine.summary()}."
