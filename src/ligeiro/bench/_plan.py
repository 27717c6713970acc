"""What ``ligeiro bench`` runs: concurrency sweeps, constant rates, ramping stages."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Final

logger = logging.getLogger(__name__)

__all__ = ["Stage", "parse_concurrency", "parse_stages", "stage_schedule"]

_SWEEP: Final = re.compile(r"^(\d+):(\d+):x(\d+)$")
_STAGE: Final = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?:(\d+(?:\.\d+)?)(?:/(s|m|min))?$")


@dataclass(frozen=True)
class Stage:
    """Ramp linearly to ``target_per_s`` over ``duration_s`` (k6's ramping-arrival-rate)."""

    duration_s: float
    target_per_s: float


def parse_concurrency(text: str) -> list[int]:
    """``16``, ``1,4,16`` or ``START:STOP:xFACTOR`` (``1:64:x2`` is 1, 2, 4, ..., 64).

    Raises:
        ValueError: anything else.
    """
    text = text.strip()
    sweep = _SWEEP.match(text)
    if sweep:
        start, stop, factor = (int(g) for g in sweep.groups())
        if start < 1 or stop < start or factor < 2:
            raise ValueError(
                f"expected START:STOP:xFACTOR with 1 <= START <= STOP, FACTOR >= 2, got {text!r}"
            )
        levels = []
        while start <= stop:
            levels.append(start)
            start *= factor
        return levels
    try:
        levels = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"expected N, N,M,... or START:STOP:xFACTOR, got {text!r}") from None
    if any(level < 1 for level in levels):
        raise ValueError(f"concurrency must be at least 1, got {text!r}")
    return levels


def parse_stages(text: str) -> list[Stage]:
    """``DURATION:TARGET,...``: ``30s:100/m,60s:4000/m`` or ``10s:50,20s:200`` (per second).

    DURATION is seconds with an optional ``ms``/``s``/``m`` unit; TARGET is requests per
    second, or per minute with ``/m`` (``/min``). Each stage ramps linearly from the
    previous target (0 before the first) to its own; ``0s:R`` jumps to R.

    Raises:
        ValueError: a stage that does not parse, or no stage at all.
    """
    stages = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _STAGE.match(part)
        if match is None:
            raise ValueError(
                f"stage {part!r}: expected DURATION:TARGET such as 30s:100/m or 10s:50"
            )
        amount, unit, target, per = match.groups()
        duration_s = float(amount) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[unit or "s"]
        rate = float(target) / (60.0 if per in ("m", "min") else 1.0)
        stages.append(Stage(duration_s, rate))
    if not stages:
        raise ValueError(f"expected at least one DURATION:TARGET stage, got {text!r}")
    return stages


def stage_schedule(stages: list[Stage]) -> tuple[list[float], list[float]]:
    """Send offsets (s) for ``stages``, and each stage's end offset.

    Arrivals follow the ramping rate exactly: in a stage going from r0 to r1 over D, the
    k-th arrival is where the integral of the rate reaches k.
    """
    offsets: list[float] = []
    ends: list[float] = []
    begin, rate0, before = 0.0, 0.0, 0.0  # before: the rate's integral up to this stage
    for stage in stages:
        duration, rate1 = stage.duration_s, stage.target_per_s
        if duration > 0:
            slope = (rate1 - rate0) / duration
            total = rate0 * duration + slope * duration**2 / 2  # arrivals in this stage
            while (k := len(offsets) + 1 - before) <= total + 1e-9:
                if abs(slope) < 1e-12:
                    t = k / rate0
                else:  # solve rate0 t + slope t^2 / 2 = k
                    t = (-rate0 + math.sqrt(max(0.0, rate0 * rate0 + 2 * slope * k))) / slope
                offsets.append(begin + t)
            before += total
        begin += duration
        ends.append(begin)
        rate0 = rate1
    return offsets, ends
