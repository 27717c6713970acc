"""Rounds: the same measurements repeated, the order rotated, the median kept.

The machine is shared and noisy: the same server can measure 7,000 req/s one minute and
3,900 the next. One pass over the servers lets a noisy minute land on one of them and
swing every ratio it takes part in. So a benchmark runs several rounds, rotates the order
in which the servers go each round (no server always runs first, or always right after
the same neighbour), and reports:

- per (server, concurrency), the round with the median req/s, plus the range over rounds;
- each ratio between two servers as the median over rounds of the ratio measured within
  one round, where both ran minutes or seconds apart on the same machine state. That is
  steadier than a ratio of medians, which may pair a quiet round of one server with a
  noisy round of the other.

Nothing here starts servers or runs load: ``bench_*.py`` modules (and ``_targets.py``)
do that and hand their ``Run``, ``Startup`` and ``Failure`` records here; the table of
medians every round-based benchmark prints (``RESULT_HEADERS``, ``result_rows``) is made
here too.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

from ._wrk import Measurement, wrk_seconds

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Sequence

    from ._harness import BenchmarkError

logger = logging.getLogger(__name__)

__all__ = [
    "RESULT_HEADERS",
    "Failure",
    "Rounds",
    "Run",
    "Spread",
    "Startup",
    "describe_rounds",
    "expected_seconds",
    "median_runs",
    "rates",
    "result_rows",
    "rotated",
    "round_ratios",
    "spread_document",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Run:
    """One candidate (a server under test) at one concurrency in one round (from 1)."""

    candidate: str
    round: int
    concurrency: int
    measurement: Measurement

    @property
    def requests_per_s(self) -> float:
        return self.measurement.load.requests_per_s


@dataclass(frozen=True)
class Spread:
    """The median of some per-round values and their range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        """Summarise ``values``, which must not be empty."""
        ordered = sorted(values)
        return cls(statistics.median(ordered), ordered[0], ordered[-1])

    def range(self, spec: str) -> str:
        """``low-high``, each formatted with ``spec`` (``",.0f"``, ``".2f"``)."""
        return f"{self.low:{spec}}-{self.high:{spec}}"


def ratio_cell(values: Iterable[float], digits: int = 2) -> str:
    """Per-round ratios as ``median x (low-high)``; ``-`` when there are none."""
    values = list(values)
    if not values:
        return "-"
    spread = Spread.of(values)
    spec = f".{digits}f"
    return f"{spread.median:{spec}}x ({spread.range(spec)})"


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` rotated left by ``round_index`` (from 0): each round another goes first."""
    if not items:
        return []
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


def median_runs(runs: Iterable[Run]) -> dict[tuple[str, int], Run]:
    """Per (candidate, concurrency), the round with the median req/s.

    With an even number of rounds this is the lower of the middle two, so the latencies
    and CPU shown beside it come from one real round, never an average of two. Keys keep
    the order in which the runs first appear.
    """
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.candidate, run.concurrency), []).append(run)
    return {
        key: sorted(group, key=lambda run: run.requests_per_s)[(len(group) - 1) // 2]
        for key, group in groups.items()
    }


def rates(runs: Iterable[Run]) -> dict[tuple[str, int], list[float]]:
    """Per (candidate, concurrency), the req/s of every round, in the order run."""
    out: dict[tuple[str, int], list[float]] = {}
    for run in runs:
        out.setdefault((run.candidate, run.concurrency), []).append(run.requests_per_s)
    return out


def round_ratios(runs: Iterable[Run], numerator: str, denominator: str) -> dict[int, list[float]]:
    """Per concurrency, ``numerator``'s req/s over ``denominator``'s within each round.

    Only rounds in which both ran at that concurrency count; a concurrency with no such
    round is left out. Take ``Spread.of`` of a list for the median and range.
    """
    rate = {(run.round, run.candidate, run.concurrency): run.requests_per_s for run in runs}
    out: dict[int, list[float]] = {}
    for (round_, candidate, concurrency), value in rate.items():
        if candidate != numerator:
            continue
        reference = rate.get((round_, denominator, concurrency))
        if reference:
            out.setdefault(concurrency, []).append(value / reference)
    return out


def describe_rounds(rounds: int, duration_s: float, warmup_s: float) -> str:
    """The line above a table of medians: how many rounds, and how long each run was."""
    return f"median of {rounds} round(s); {duration_s:g} s per run after {warmup_s:g} s of warm-up"


def spread_document(values: list[float]) -> dict[str, object]:
    """Per-round values for a JSON report: their median and range, and the values."""
    return {**dataclasses.asdict(Spread.of(values)), "rounds": values}


# --- a run's record -----------------------------------------------------------------------


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


# --- the table of medians -----------------------------------------------------------------

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
