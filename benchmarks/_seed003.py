"""Seed 003's experiment, the parts that start no server: the profile, the limits, the search.

The seed's k6 scenario as ``ligeiro bench --stages`` (``stages_argument``) with its
random iris features (``SEED_TEMPLATE``, ``V2_TEMPLATE``); half a CPU and 128 MB as a
cgroup v1 (``Cgroup``); the sampler of CPU and RSS behind the panels (``Sampler``,
``Series``); one ``ligeiro bench`` run (``Load``); and the capacity search above the top
stage (``capacity_search``). ``bench_seed003`` runs each server through them, and
``_seed003_report`` draws what they measured.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from ._harness import LIGEIRO, BenchmarkError
from ._procfs import tree_rss_bytes

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from ._harness import ServerProcess

__all__ = [
    "CPU_PERIOD_US",
    "CPU_QUOTA_US",
    "MEMORY_LIMIT",
    "MLSERVER_TEMPLATE",
    "P95_LIMIT_MS",
    "RETRY_MEMORY_LIMIT",
    "SAMPLE_S",
    "SEED_STAGES",
    "SEED_TEMPLATE",
    "SHARES",
    "V2_TEMPLATE",
    "Cgroup",
    "Load",
    "Sampler",
    "Series",
    "capacity_search",
    "stages_argument",
]

# The seed's k6 scenario: (seconds, requests per minute) — 100/min held for 2 min
# (startRate 100), then linear ramps, 2 min each.
SEED_STAGES: Final = ((120.0, 100.0), (120.0, 4000.0), (120.0, 8000.0), (120.0, 16000.0))
# The k6 script's randomFloat(min, max) for each feature: iris' minimum and maximum.
SEED_TEMPLATE: Final = (
    '{"sepal_length": {{uniform:4.3:7.9}}, "sepal_width": {{uniform:2:4.4}}, '
    '"petal_length": {{uniform:1:6.9}}, "petal_width": {{uniform:0.1:2.5}}}'
)
# The same draws as one [1, 4] FP32 tensor, for ligeiro's V2 route.
V2_TEMPLATE: Final = (
    '{"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": '
    "[{{uniform:4.3:7.9}}, {{uniform:2:4.4}}, {{uniform:1:6.9}}, {{uniform:0.1:2.5}}]}]}"
)
# MLServer's scikit-learn runtime takes any input name; it answers the label as "predict".
MLSERVER_TEMPLATE: Final = V2_TEMPLATE.replace('"float_input"', '"input-0"').replace(
    '"FP32"', '"FP64"'
)
CPU_QUOTA_US: Final = 50_000
CPU_PERIOD_US: Final = 100_000
MEMORY_LIMIT: Final = 128 * 2**20
# cpu.shares of the server's and the generator's groups (a task at the root weighs 1024):
# a guaranteed share, as a Kubernetes CPU request gives, on a machine others use too.
SHARES: Final = 16384
# A server OOM-killed at start under 128 MiB runs again under this, so its speed is known.
RETRY_MEMORY_LIMIT: Final = 512 * 2**20
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
P95_LIMIT_MS: Final = 100.0
SAMPLE_S: Final = 0.5
MAX_RPM: Final = 2_000_000.0  # the search's ceiling: far past what one generator core sends


# --- the half CPU ---------------------------------------------------------------------------


class Cgroup:
    """One cgroup v1 per controller (cpu, cpuacct, memory) under one name, removed on exit.

    ``quota`` (the default: half a CPU) and ``memory_limit`` are the limits; ``None``
    writes none. ``cpu.shares`` is ``SHARES``: the weight the group gets when the machine
    is oversubscribed, so other jobs on a shared machine do not take the half CPU.
    """

    def __init__(
        self,
        name: str,
        memory_limit: int | None = MEMORY_LIMIT,
        *,
        quota: bool = True,
        root: Path = CGROUP_ROOT,
    ) -> None:
        self.paths = {c: root / c / name for c in ("cpu", "cpuacct", "memory")}
        self.memory_limit = memory_limit
        self.quota = quota

    def __enter__(self) -> Self:
        """Create the groups and write the limits.

        Raises:
            OSError: a controller is not mounted, or this user may not create groups.
        """
        for path in self.paths.values():
            path.mkdir(exist_ok=True)
        (self.paths["cpu"] / "cpu.shares").write_text(str(SHARES))
        if self.quota:
            (self.paths["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (self.paths["cpu"] / "cpu.cfs_quota_us").write_text(str(CPU_QUOTA_US))
        if self.memory_limit is not None:
            (self.paths["memory"] / "memory.limit_in_bytes").write_text(str(self.memory_limit))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for path in self.paths.values():
            with contextlib.suppress(OSError):  # busy only if a process outlived stop()
                path.rmdir()

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself into the groups, then execs."""
        joins = "; ".join(f"echo $$ > {path}/cgroup.procs" for path in self.paths.values())
        return ["sh", "-c", f'{joins}; exec "$@"', "sh", *argv]

    def _read(self, controller: str, name: str) -> str:
        return (self.paths[controller] / name).read_text()

    def cpu_s(self) -> float:
        return int(self._read("cpuacct", "cpuacct.usage")) / 1e9

    def memory_peak_bytes(self) -> int:
        return int(self._read("memory", "memory.max_usage_in_bytes"))

    def oom_kills(self) -> int:
        fields = dict(line.split() for line in self._read("memory", "memory.oom_control").splitlines())
        return int(fields.get("oom_kill", 0))

    def throttled(self) -> tuple[int, int]:
        """(periods, periods throttled) so far."""
        fields = dict(line.split() for line in self._read("cpu", "cpu.stat").splitlines())
        return int(fields["nr_periods"]), int(fields["nr_throttled"])


@dataclass
class Series:
    """The sampler's readings: wall time, CPU seconds, RSS bytes of the server's tree."""

    at: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

    def cpu_between(self, begin: float, end: float) -> float | None:
        """Average cores used from ``begin`` to ``end`` (wall times), interpolated."""
        if len(self.at) < 2 or end <= begin:
            return None
        used = _interpolate(self.at, self.cpu_s, end) - _interpolate(self.at, self.cpu_s, begin)
        return used / (end - begin)

    def rss_peak(self, begin: float, end: float) -> int | None:
        values = [r for t, r in zip(self.at, self.rss, strict=True) if begin <= t <= end]
        return max(values, default=None)


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    import bisect

    i = bisect.bisect_left(xs, x)
    if i <= 0:
        return ys[0]
    if i >= len(xs):
        return ys[-1]
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


class Sampler:
    """Reads CPU (the cgroup's, else the tree's) and the tree's RSS every ``SAMPLE_S``."""

    def __init__(self, server: ServerProcess, cgroup: Cgroup | None) -> None:
        self.server, self.cgroup = server, cgroup
        self.series = Series()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, BenchmarkError, ValueError):
                cpu = self.cgroup.cpu_s() if self.cgroup else self.server.cpu_s()
                rss = tree_rss_bytes(self.server.pid)
                self.series.at.append(time.time())
                self.series.cpu_s.append(cpu)
                self.series.rss.append(rss)
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the load -------------------------------------------------------------------------------


def stages_argument(scale: float) -> str:
    """The seed's stages for ``ligeiro bench --stages``, ``scale`` times shorter."""
    parts = [f"0s:{SEED_STAGES[0][1]:g}/m"]
    parts += [f"{seconds / scale:g}s:{rpm:g}/m" for seconds, rpm in SEED_STAGES]
    return ",".join(parts)


@dataclass(frozen=True)
class Load:
    """How ``ligeiro bench`` reaches one server: its URL, route, and the body template."""

    url: str
    route: str
    template: Path
    load_cores: str
    processes: int
    cgroup: Cgroup | None = None  # the generator's: shares, no limits

    def run(self, mode: Sequence[str], json_path: Path) -> dict[str, object]:
        """Run ``ligeiro bench`` with ``mode`` (``--stages ...`` or ``--rate R ...``).

        Raises:
            BenchmarkError: it wrote no report (it exits 1 when a request failed: expected).
        """
        command = [
            "taskset", "-c", self.load_cores,
            LIGEIRO, "bench", self.url, "iris",
            "--route", self.route, "--template", str(self.template),
            "--connections", "4096", "--processes", str(self.processes), *mode,
            "--json", str(json_path),
        ]  # fmt: skip
        print(f"  $ {' '.join(command[3:])}", flush=True)
        if self.cgroup is not None:
            command = self.cgroup.wrap(command)
        json_path.unlink(missing_ok=True)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if not json_path.exists():
            raise BenchmarkError(f"ligeiro bench wrote no report: {done.stderr[-2000:]}")
        report: dict[str, object] = json.loads(json_path.read_text())
        return report


def _level_passes(level: dict[str, object]) -> bool:
    p95 = level["latency_ms"].get("p95") if isinstance(level["latency_ms"], dict) else None
    return not level["error_count"] and p95 is not None and p95 <= P95_LIMIT_MS


def capacity_search(
    load: Load, hold_s: float, refine: int, folder: Path, settle_s: float = 3.0
) -> dict[str, object]:
    """Constant rates from 16,000/min up (or down) to the first that fails, then bisected.

    A level holds when every request is answered 2xx and p95 ≤ 100 ms. A level where the
    generator was busier than 90 % of a core cannot be trusted: the search stops there
    and says so (the capacity is then at least the last level held).
    """
    tried: list[dict[str, object]] = []

    def attempt(rpm: float) -> bool:
        report = load.run(
            ["--rate", f"{rpm / 60:.3f}", "--duration", f"{hold_s:g}"],
            folder / f"rate-{rpm:.0f}.json",
        )
        (level,) = report["levels"]  # type: ignore[misc]
        held = _level_passes(level)
        tried.append({"rpm": rpm, "held": held, "level": level})
        print(f"    {rpm:,.0f}/min: {'held' if held else 'FAILED'} (p95 "
              f"{level['latency_ms'].get('p95', float('nan')):.1f} ms, errors "
              f"{level['errors'] or 0}, client CPU {level['client_cpu']:.0%})", flush=True)  # fmt: skip
        if not held:
            time.sleep(settle_s)  # let a backlog drain before the next level
        return held

    start = SEED_STAGES[-1][1]
    low: float | None = None
    high: float | None = None
    generator_bound = False
    rpm = start
    if attempt(rpm):
        while low is None or high is None:
            low = rpm
            if tried[-1]["level"]["is_client_bound"]:  # type: ignore[index]
                generator_bound = True
                break
            if rpm * 2 > MAX_RPM:
                break
            rpm *= 2
            if not attempt(rpm):
                high = rpm
    else:
        high = rpm
        while rpm > 60 and low is None:
            rpm /= 2
            if attempt(rpm):
                low = rpm
            else:
                high = rpm
    for _ in range(refine if not generator_bound and low is not None else 0):
        middle = round((low + high) / 2)  # type: ignore[operator]
        if attempt(middle):
            low = middle
        else:
            high = middle
    return {"highest_held_rpm": low, "first_failed_rpm": high,
            "generator_bound": generator_bound, "hold_s": hold_s, "levels": tried}  # fmt: skip
