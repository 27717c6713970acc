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

Nothing here starts servers or runs load: ``bench_*.py`` modules do that and hand their
``Run`` records here.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ._harness import Measurement

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "Run",
    "Spread",
    "describe_rounds",
    "median_runs",
    "rates",
    "rotated",
    "round_ratios",
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
