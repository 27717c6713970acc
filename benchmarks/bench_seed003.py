"""Seed 003's experiment, reproduced: three iris servers, each held to half a CPU and 128 MB.

The article served one scikit-learn pipeline three ways (FastAPI + pickle, FastAPI +
ONNX, Go + ONNX), each in a container limited to ``cpus: 0.5`` and ``memory: 128M``,
loaded them with k6's ramping-arrival-rate (100 requests/min for 2 min, then linear
ramps to 4,000, 8,000 and 16,000 per minute, 2 min each) posting random iris features,
and read four Grafana panels: p95 latency, requests per minute, memory and CPU. Here
ligeiro takes the Go server's place, twice: ``ligeiro`` answers the seed's own payload
on ``POST /v1/models/iris:predict``, ``ligeiro-v2`` the same numbers as a V2 tensor on
``/v2/models/iris/infer``; the baselines are ``benchmarks/baselines``. Each server, in
turn:

1. starts in its own cgroup v1: ``cpu.cfs_quota_us`` 50,000 per ``cpu.cfs_period_us``
   100,000 (what docker writes for ``cpus: 0.5``) and ``memory.limit_in_bytes`` 128 MiB
   (no swap on these machines), and ``cpu.shares`` 16,384, so that other jobs on a
   shared machine cannot take the half CPU (the generator gets such a group too, without
   limits). Like docker's ``cpus``, that is a quota, not a cpuset:
   server and generator may run on any core unless ``--server-cores`` / ``--load-cores``
   pin them. Where a cgroup cannot be made the server runs pinned to one core by
   ``taskset`` instead, and the run prints why (half a CPU is then not enforced);
2. is loaded with the seed's profile through ``ligeiro bench --stages`` (the seed's
   stage lengths, or ``--scale N`` times shorter, which the report says), each request a
   fresh draw of the seed's payload (``--template``: every feature uniform within iris'
   range), the run cut into windows (``--window``) for the panels over time, while a
   thread reads the cgroup's CPU time and the process tree's RSS every half second;
3. goes past the top stage: constant rates from 16,000/min, doubled until p95 passes
   100 ms or a request fails (or halved until one holds), then bisected; the highest
   rate held is the server's capacity under half a CPU.

Run: ``python -m benchmarks.bench_seed003 [--scale 8] [--markdown docs/seed003.md]``
(about 4 minutes per server at ``--scale 8``; ``--skip-capacity`` for the stages only).
The panels are drawn with matplotlib into ``--plots DIR`` as SVG.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from ._harness import (
    SERVER_CORE,
    BenchmarkError,
    HttpRequest,
    ServerProcess,
    _cpu_model,
    exclusive_machine,
    free_port,
    write_report,
)
from .bench_iris import HOST, JSON_HEADERS, PACKAGES, PICKLE, ROOT, WORK_DIR, Target
from .bench_iris import ensure_models, targets, verify

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

__all__ = ["SEED_STAGES", "Cgroup", "main", "stages_argument"]

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
# ligeiro as the image runs it: one worker, one ONNX Runtime thread, gRPC on; one model.
LIGEIRO_ARGS: Final = ("--workers", "1", "--threads", "1", "--grpc-port", "0")
# ligeiro answers the seed's payload on :predict; ligeiro-v2 is the same server on V2 infer.
SERVERS: Final = ("fastapi-pickle", "fastapi-onnx", "ligeiro", "ligeiro-v2")
_TARGETS: Final = {"ligeiro": "ligeiro-predict"}
# MLServer (``--mlserver PATH``, in its own venv) as a user would start it on the pickle.
MLSERVER: Final = "mlserver"


# --- the half CPU ---------------------------------------------------------------------------


class OomAtStart(BenchmarkError):
    """The server was OOM-killed before it was ready: its start needs more than the limit."""

    def __init__(self, limit: int, peak: int) -> None:
        super().__init__(f"OOM-killed before ready under {limit / 2**20:.0f} MiB "
                         f"(cgroup peak {peak / 2**20:.0f} MiB)")  # fmt: skip
        self.limit, self.peak = limit, peak


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
                rss = _tree_rss_bytes(self.server.pid)
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


def _tree_rss_bytes(pid: int) -> int:
    """The current resident memory (VmRSS) of ``pid`` and its descendants."""
    from ._harness import _process_tree

    total_kib = 0
    for member in _process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return total_kib * 1024


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
            str(Path(sys.executable).with_name("ligeiro")), "bench", self.url, "iris",
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


# --- one server -----------------------------------------------------------------------------


def _mlserver_predicts_class_0(answer: object) -> bool:
    outputs = answer.get("outputs", []) if isinstance(answer, dict) else []
    return bool(outputs) and outputs[0].get("data", [None])[0] == 0


def _mlserver_target(executable: Path) -> Target:
    """MLServer 1.7 with its scikit-learn runtime on the seed's pickle, as its docs run it."""
    folder = WORK_DIR / "seed003-mlserver"
    payload = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                           "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
    return Target(MLSERVER, (str(executable), "start", str(folder)), "/v2/health/ready",
                  "/v2/models/iris/infer", payload, _mlserver_predicts_class_0,
                  is_baseline=True)  # fmt: skip


def _mlserver_folder(port: int) -> None:
    """settings.json and the model's settings.

    ``parallel_workers`` is 0 (inference in the server's process): MLServer 1.7.1's
    default pool of one worker process dies at start here ("There is no current event
    loop in thread 'MainThread'", Python 3.11.7).
    """
    folder = WORK_DIR / "seed003-mlserver"
    (folder / "iris").mkdir(parents=True, exist_ok=True)
    # metrics_dir: MLServer writes its Prometheus files to ./.metrics otherwise.
    settings = {"host": HOST, "http_port": port, "grpc_port": free_port(HOST),
                "metrics_port": free_port(HOST), "parallel_workers": 0,
                "metrics_dir": str(folder / "metrics")}  # fmt: skip
    (folder / "settings.json").write_text(json.dumps(settings))
    model = {"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
             "parameters": {"uri": str(PICKLE), "version": "1"}}  # fmt: skip
    (folder / "iris" / "model-settings.json").write_text(json.dumps(model))


def _command(name: str, target: Target, port: int) -> list[str]:
    if name == MLSERVER:
        _mlserver_folder(port)
        return list(target.command)
    if name.startswith("ligeiro"):
        executable = str(Path(sys.executable).with_name("ligeiro"))
        return [executable, "serve", str(ROOT / "examples" / "models" / "iris"),
                "--model-name", "iris", "--host", HOST, "--port", str(port), *LIGEIRO_ARGS]  # fmt: skip
    return [argument.format(port=port) for argument in target.command]


def run_server(
    name: str, options: argparse.Namespace, folder: Path, memory_limit: int = MEMORY_LIMIT
) -> dict[str, object]:
    """Start ``name`` under the limits, run the seed's stages and the capacity search.

    Raises:
        OomAtStart: the memory limit killed it before it was ready.
        BenchmarkError: it did not start, answered wrongly, or died under the load.
    """
    if name == MLSERVER:
        target = _mlserver_target(options.mlserver)
    else:
        target = targets()[_TARGETS.get(name, name)]
    port = free_port(HOST)
    base = f"http://{HOST}:{port}"
    result: dict[str, object] = {"server": name, "route": target.path}
    with contextlib.ExitStack() as stack:
        cgroup: Cgroup | None = None
        try:
            cgroup = stack.enter_context(Cgroup(f"ligeiro-seed003-{name}", memory_limit))
            result["limits"] = (f"cgroup v1: cpu.cfs_quota_us {CPU_QUOTA_US} / cfs_period_us "
                                f"{CPU_PERIOD_US}, memory.limit_in_bytes {memory_limit}, "
                                f"cpu.shares {SHARES}")  # fmt: skip
            result["memory_limit"] = memory_limit
        except OSError as exc:
            reason = f"no cgroup ({exc.strerror or exc}): taskset -c {SERVER_CORE} only, a whole core"
            print(f"  {name}: {reason}", flush=True)
            result["limits"] = reason
        cores = options.server_cores if cgroup else str(SERVER_CORE)
        argv = _command(name, target, port)
        server = stack.enter_context(ServerProcess(
            cgroup.wrap(argv) if cgroup else argv, base + target.ready_path,
            log_path=WORK_DIR / "logs" / f"seed003-{name}.log", cwd=ROOT, env=target.env,
            core=cores,
        ))  # fmt: skip
        print(f"{name}: {' '.join(argv)} [{result['limits']}]", flush=True)
        try:
            result["startup_s"] = server.start(timeout_s=options.ready_timeout)
        except BenchmarkError:
            if cgroup is not None and cgroup.oom_kills():
                raise OomAtStart(memory_limit, cgroup.memory_peak_bytes()) from None
            raise
        verify(target, HttpRequest("POST", base + target.path,
                                   json.dumps(target.payload).encode(), JSON_HEADERS))  # fmt: skip
        template = options.templates[{"ligeiro-v2": "v2", MLSERVER: MLSERVER}.get(name, "seed")]
        load_group = None
        if cgroup is not None:
            load_group = stack.enter_context(
                Cgroup("ligeiro-seed003-load", memory_limit=None, quota=False)
            )
        load = Load(base, target.path, template, options.load_cores, options.processes,
                    load_group)  # fmt: skip
        window = options.window or SEED_STAGES[0][0] / options.scale / 6
        with Sampler(server, cgroup) as sampler:
            time.sleep(2 * SAMPLE_S)  # an idle reading first
            result["stages"] = load.run(
                ["--stages", stages_argument(options.scale), "--window", f"{window:g}"],
                folder / f"{name}-stages.json",
            )
            server.check_running()
            if not options.skip_capacity:
                print(f"  {name}: capacity search ({options.hold:g} s per level)", flush=True)
                result["capacity"] = capacity_search(load, options.hold, options.refine, folder)
            time.sleep(2 * SAMPLE_S)
        result["series"] = {"at": sampler.series.at, "cpu_s": sampler.series.cpu_s,
                            "rss": sampler.series.rss}  # fmt: skip
        result["peak_rss_bytes"] = server.peak_rss_bytes()
        if cgroup is not None:
            periods, throttled = cgroup.throttled()
            result["cgroup"] = {"memory_peak_bytes": cgroup.memory_peak_bytes(),
                                "oom_kills": cgroup.oom_kills(), "periods": periods,
                                "throttled_periods": throttled}  # fmt: skip
        server.check_running()
    return result


# --- the run --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_seed003",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated, from {', '.join(SERVERS)} (default all)")  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0,
                        help="run the seed's stages this many times shorter (default 1: 2 min each)")  # fmt: skip
    parser.add_argument("--window", type=float, default=0.0,
                        help="seconds per point of the panels (default a twelfth of a ramp)")  # fmt: skip
    parser.add_argument("--hold", type=float, default=10.0,
                        help="seconds per capacity-search level (default 10)")  # fmt: skip
    parser.add_argument("--refine", type=int, default=2, help="bisection steps (default 2)")
    parser.add_argument("--skip-capacity", action="store_true", help="the stages only")
    every_core = f"0-{(os.cpu_count() or 1) - 1}"
    parser.add_argument("--server-cores", default=every_core,
                        help=f"the servers' CPU list for taskset (default {every_core}: all)")  # fmt: skip
    parser.add_argument("--load-cores", default=every_core,
                        help=f"the generator's CPU list for taskset (default {every_core}: all)")  # fmt: skip
    parser.add_argument("--processes", type=int, default=1, help="generator processes")
    parser.add_argument("--mlserver", type=Path, metavar="PATH",
                        help="the mlserver command of an MLServer 1.7 venv (with mlserver-sklearn): "
                        "adds the mlserver server, on the seed's pickle")  # fmt: skip
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="measure nothing: write the report of an earlier run's --json")
    parser.add_argument("--repeats", type=Path, nargs="*", default=[], metavar="JSON",
                        help="other runs' --json: their capacities in a table beside it")  # fmt: skip
    parser.add_argument("--markdown", type=Path, help="write the report (docs/seed003.md)")
    parser.add_argument("--plots", type=Path,
                        help="where the SVG panels go (default: the --markdown path without "
                        "its .md, a folder; else .bench/seed003/)")  # fmt: skip
    options = parser.parse_args(argv)
    known = {*SERVERS, *([MLSERVER] if options.mlserver else [])}
    unknown = set(options.servers.split(",")) - known
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; expected some of {', '.join(sorted(known))}"
                     + ("" if options.mlserver else " (mlserver needs --mlserver PATH)"))  # fmt: skip
    if options.scale <= 0:
        parser.error("--scale must be positive")
    if options.plots is None:
        options.plots = (
            options.markdown.with_suffix("") if options.markdown else WORK_DIR / "seed003"
        )
    return options


def _machine() -> dict[str, object]:
    """The machine and versions (``machine_info``'s, without wrk, which this run needs not)."""
    import importlib.metadata
    import platform

    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "nproc": os.cpu_count(),
            "cpu_model": _cpu_model(), "kernel": platform.release(),
            "load_average_1m": os.getloadavg()[0], "python": platform.python_version(),
            "packages": versions}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from ._seed003_report import render

    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options.render is not None:
        repeats = [json.loads(path.read_text()) for path in options.repeats]
        document = json.loads(options.render.read_text())
        print(render(document, options.plots, options.markdown, repeats))
        return 0
    command = "python -m benchmarks.bench_seed003 " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    ensure_models()
    results: list[dict[str, object]] = []
    with exclusive_machine(), tempfile.TemporaryDirectory(prefix="seed003-") as scratch:
        folder = Path(scratch)
        options.templates = {"seed": folder / "seed.json.tmpl", "v2": folder / "v2.json.tmpl"}
        options.templates["seed"].write_text(SEED_TEMPLATE)
        options.templates["v2"].write_text(V2_TEMPLATE)
        options.templates[MLSERVER] = folder / "mlserver.json.tmpl"
        options.templates[MLSERVER].write_text(MLSERVER_TEMPLATE)
        machine = _machine()
        print(f"seed 003 on {machine['cpu_model']} ({machine['nproc']} cores); stages {stages_argument(options.scale)}"
              + (f" ({options.scale:g}x shorter than the seed's)" if options.scale != 1 else ""),
              flush=True)  # fmt: skip
        for name in options.servers.split(","):
            try:
                try:
                    results.append(run_server(name, options, folder))
                except OomAtStart as oom:
                    print(f"{name}: {oom}; again under {RETRY_MEMORY_LIMIT / 2**20:.0f} MiB, "
                          "the CPU quota unchanged", flush=True)  # fmt: skip
                    result = run_server(name, options, folder, RETRY_MEMORY_LIMIT)
                    result["oom_at_start"] = {"limit": oom.limit, "peak": oom.peak}
                    results.append(result)
            except BenchmarkError as error:
                print(f"{name} FAILED: {error}", flush=True)
                results.append({"server": name, "failed": str(error)})
    document = {"command": command, "machine": machine, "options": {
        k: str(v) for k, v in vars(options).items()}, "servers": results}  # fmt: skip
    if options.json:
        write_report(options.json, json.dumps(document, indent=1) + "\n")
    text = render(document, options.plots, options.markdown)
    print(text)
    return 1 if any("failed" in r for r in results) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
