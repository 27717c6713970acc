"""Workers: weights shared by load-then-fork, start-up and restart, 1 vs 2 workers.

``ligeiro serve --workers N`` runs N processes on one port. With one runtime thread per
worker the supervisor loads the repository once and forks the workers from it, so they
share the weights copy-on-write; with more threads each worker loads its own copy
(``docs/adr/0005-workers-share-weights.md``). This measures what that buys and costs:

- **memory**: a generated ~90 MB MLP (nothing is downloaded) served by 1, 2 and 4
  workers, shared (``--threads 1``) and not (``--threads 2``), and iris alone (shared),
  which shows what a worker costs with almost no weights. After every worker has run
  the model, ``/proc/PID/smaps_rollup`` of the supervisor and each worker gives RSS, PSS
  and USS, and ``/proc/PID/pagemap`` the distinct physical pages of them all (PSS also
  divides library pages with unrelated processes, so it drifts with the machine). The
  issue's bar: memory grows by at most 0.3x the model's size per extra worker, shared;
- **start-up and restart**: seconds to the first ready answer and to the supervisor's
  "serving ... with N workers" line, for 2 workers shared and not; then ``kill -9`` of a
  worker and the seconds until the supervisor logs the restart, a new process exists,
  N sockets listen on the HTTP port, and N on the gRPC port (a worker opens that one
  after its HTTP server runs, so the new worker answers);
- **scaling**: throughput of 1 and 2 workers on iris and on mlp (batching off, so that
  the model's own throughput is compared) with wrk at ``c=64``. The machine has two
  cores, so 2 workers share both cores with wrk: this is not the setting of the
  ">= 0.85 x N" target (many cores, load generated elsewhere), and the report says so.

Start-up, restart and throughput are noisy, so everything runs in rounds (``--rounds``,
default 3) with the order rotated, as in ``bench_iris``; memory is reported from the
round with the median PSS, growth as the median of per-round growths.

Run: ``python -m benchmarks.bench_workers [--rounds 3] [--duration 5] [--warmup 1]
[--concurrency 64] [--model-mb 90] [--skip memory|scaling] [--json PATH]
[--markdown PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

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
)
from ._models import build_mlp
from ._rounds import Run, Spread, describe_rounds, median_runs, ratio_cell, rotated, round_ratios
from .bench_iris import MODELS, V2_PAYLOAD, ensure_models, v2_predicts_class_0

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence


logger = logging.getLogger(__name__)

ROOT: Final = Path(__file__).resolve().parent.parent
WORK_DIR: Final = ROOT / ".bench"
MLP_MODEL: Final = MODELS / "mlp" / "1" / "model.onnx"
MLP_BUILD_SCRIPT: Final = ROOT / "examples" / "build_mlp.py"
HOST: Final = "127.0.0.1"
JSON_HEADERS: Final = {"Content-Type": "application/json"}
PACKAGES: Final = ("ligeiro", "onnxruntime", "onnx", "numpy", "msgspec", "uvloop", "grpcio")
LIGEIRO: Final = str(Path(sys.executable).with_name("ligeiro"))
_KIB_PER_MIB: Final = 1024

# --- the generated model --------------------------------------------------------------------

BIG_MODEL: Final = "big"
BIG_INPUTS: Final = 256
BIG_OUTPUTS: Final = 16
BIG_HIDDEN_LAYERS: Final = 5  # square hidden x hidden layers: they hold nearly all weights
BIG_BATCH: Final = 4  # rows per warm-up request


def hidden_width(target_bytes: float, layers: int = BIG_HIDDEN_LAYERS) -> int:
    """The hidden width whose float32 weights and biases come closest to ``target_bytes``.

    The model holds ``in*w + w`` (first layer), ``layers * (w*w + w)`` and ``w*out + out``
    floats: a quadratic in ``w``, solved here.
    """
    a = layers
    b = BIG_INPUTS + 1 + layers + BIG_OUTPUTS
    c = BIG_OUTPUTS - target_bytes / 4
    return max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))


def build_big_model(path: Path, target_bytes: float) -> int:
    """Write a float32 MLP (MatMul + Add + Relu) of about ``target_bytes`` of weights.

    Input ``x`` is FP32 ``[N, 256]``; output ``y`` is FP32 ``[N, 16]``; between them
    ``BIG_HIDDEN_LAYERS + 1`` hidden layers of ``hidden_width(target_bytes)``. The
    generator (seeded random weights, IR 8, opset 17) is ``_models.build_mlp``.

    Returns:
        The bytes of the initializers (weights and biases).
    """
    width = hidden_width(target_bytes)
    return build_mlp(path, [BIG_INPUTS, *[width] * (BIG_HIDDEN_LAYERS + 1), BIG_OUTPUTS])


def big_request(base_url: str) -> HttpRequest:
    """A ``[4, 256]`` V2 request for the generated model."""
    rows = np.random.default_rng(1).standard_normal((BIG_BATCH, BIG_INPUTS)).round(4)
    body = {
        "inputs": [
            {
                "name": "x",
                "shape": [BIG_BATCH, BIG_INPUTS],
                "datatype": "FP32",
                "data": rows.ravel().tolist(),
            }
        ]
    }
    return HttpRequest(
        "POST", f"{base_url}/v2/models/{BIG_MODEL}/infer", json.dumps(body).encode(), JSON_HEADERS
    )


def answers_big(answer: object) -> bool:
    """The V2 response holds ``y`` with ``[4, 16]`` values."""
    outputs = answer.get("outputs", []) if isinstance(answer, dict) else []
    return any(
        isinstance(o, dict)
        and o.get("name") == "y"
        and o.get("shape") == [BIG_BATCH, BIG_OUTPUTS]
        and len(o.get("data", [])) == BIG_BATCH * BIG_OUTPUTS
        for o in outputs
    )


# --- processes --------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's list: a fork may come from any)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += map(int, Path(task.path, "children").read_text().split())
    return sorted(set(found))


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 once it has gone)."""
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        return int(fields[11]) + int(fields[12])
    return 0


@dataclass(frozen=True)
class ProcessMemory:
    """One process's memory from ``/proc/PID/smaps_rollup``, in KiB."""

    pid: int
    role: str  # "single" (one worker, no supervisor), "supervisor" or "worker"
    rss_kib: int
    pss_kib: int
    uss_kib: int  # Private_Clean + Private_Dirty: what its exit would give back

    @classmethod
    def read(cls, pid: int, role: str) -> ProcessMemory:
        fields: dict[str, int] = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0])
        return cls(
            pid=pid,
            role=role,
            rss_kib=fields["Rss"],
            pss_kib=fields["Pss"],
            uss_kib=fields["Private_Clean"] + fields["Private_Dirty"],
        )


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on ``port`` (one per worker with SO_REUSEPORT).

    The supervisor's reserved socket is bound but never listens, so it does not count.
    """
    listening = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    listening += 1
    return listening


_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
_MAPPING: Final = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")
_PRESENT: Final = np.uint64(1 << 63)
_PFN_MASK: Final = np.uint64((1 << 55) - 1)


def resident_frames(pid: int) -> np.ndarray:
    """The physical page frames ``pid`` has resident, from ``/proc/PID/pagemap``.

    Only mappings with resident pages (``Rss`` > 0 in smaps) are read. Without
    CAP_SYS_ADMIN the kernel reports every frame as 0.
    """
    frames = []
    start = end = 0
    with Path(f"/proc/{pid}/pagemap").open("rb") as pagemap:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            if match := _MAPPING.match(line):
                start, end = int(match[1], 16), int(match[2], 16)
            elif line.startswith("Rss:") and int(line.split()[1]) > 0:
                pagemap.seek(start // _PAGE * 8)
                entries = np.frombuffer(pagemap.read((end - start) // _PAGE * 8), np.uint64)
                frames.append(entries[(entries & _PRESENT) != 0] & _PFN_MASK)
    return np.concatenate(frames) if frames else np.zeros(0, np.uint64)


def distinct_mib(pids: Sequence[int]) -> float | None:
    """Resident memory of ``pids`` with every physical page counted once, in MiB.

    Unlike a sum of PSS, this does not depend on other processes on the machine that
    map the same libraries (PSS divides those pages with them). None when the kernel
    hides frame numbers (not root).
    """
    frames = np.unique(np.concatenate([resident_frames(pid) for pid in pids]))
    if frames.size and not frames.any():
        return None
    return float(frames.size * _PAGE / 2**20)


def wait_for_log(server: ServerProcess, pattern: re.Pattern[str], timeout_s: float) -> str:
    """Poll the server's log until a line matches ``pattern``; return that line.

    Raises:
        BenchmarkError: no such line within ``timeout_s``, or the server exited.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in server.log_path.read_text(errors="replace").splitlines():
                if pattern.search(line):
                    return line
        server.check_running()
        time.sleep(0.01)
    raise BenchmarkError(f"no log line matching {pattern.pattern!r}:\n{server.log_tail()}")


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every 5 ms: a separate process offers nothing to wait on.

    Raises:
        BenchmarkError: it did not hold within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.005)


def check_answer(request: HttpRequest, is_expected: Callable[[object], bool]) -> None:
    """Send ``request`` on a new connection; require a 200 that ``is_expected`` accepts.

    Raises:
        BenchmarkError: no answer, another status, or an unexpected body.
    """
    try:
        status, body = http_call(request, timeout_s=30.0)
        answer = json.loads(body)
    except (OSError, ValueError) as error:
        raise BenchmarkError(f"{request.method} {request.url} failed: {error}") from None
    if status != 200 or not is_expected(answer):
        raise BenchmarkError(
            f"{request.method} {request.url}: got {status}: {body[:300].decode(errors='replace')}"
        )


# --- memory, start-up and restart -------------------------------------------------------------

_ALL_READY: Final = re.compile(r"serving (on|\d+ model version).* and grpc://\S+:(\d+)")
_RESTARTING: Final = re.compile(r"exited with .*; restarting")
MEMORY_WORKERS: Final = (1, 2, 4)
RESTART_WORKERS: Final = 2
WARM_REQUESTS: Final = 50
RESTART_MIN_AGE_S: Final = 2.0
# (model, threads): the generated model shared and per worker; iris alone, shared, shows
# what a worker costs with (almost) no weights: the floor under the growth per worker.
MEMORY_CONFIGS: Final = ((BIG_MODEL, 1), (BIG_MODEL, 2), ("iris", 1))


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
        return sum(p.pss_kib for p in self.processes) / _KIB_PER_MIB

    @property
    def rss_mib(self) -> float:
        return sum(p.rss_kib for p in self.processes) / _KIB_PER_MIB

    def uss_mib(self, role: str) -> list[float]:
        return [p.uss_kib / _KIB_PER_MIB for p in self.processes if p.role == role]


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


def server_argv(repository: Path, port: int, workers: int, threads: int) -> list[str]:
    return [
        LIGEIRO, "serve", str(repository), "--host", HOST, "--port", str(port),
        "--grpc-port", "0", "--workers", str(workers), "--threads", str(threads),
    ]  # fmt: skip


def worker_pids(server: ServerProcess, workers: int) -> list[int]:
    """The worker processes: the server itself when it runs one worker alone."""
    return [server.pid] if workers == 1 else children(server.pid)


def memory_of(server: ServerProcess, workers: int) -> list[ProcessMemory]:
    if workers == 1:
        return [ProcessMemory.read(server.pid, "single")]
    return [
        ProcessMemory.read(server.pid, "supervisor"),
        *(ProcessMemory.read(pid, "worker") for pid in children(server.pid)),
    ]


def warm_workers(
    server: ServerProcess,
    request: HttpRequest,
    workers: int,
    is_expected: Callable[[object], bool] = answers_big,
) -> list[float]:
    """Send ``WARM_REQUESTS`` on new connections, so SO_REUSEPORT reaches every worker.

    Returns:
        Each worker's CPU seconds during those requests; a 0 means a worker never ran the
        model, and its memory would be understated.
    """
    pids = worker_pids(server, workers)
    before = [cpu_ticks(pid) for pid in pids]
    for _ in range(WARM_REQUESTS):
        check_answer(request, is_expected)  # urllib opens a new connection every time
    ticks = os.sysconf("SC_CLK_TCK")
    return [(cpu_ticks(pid) - was) / ticks for pid, was in zip(pids, before, strict=True)]


def grpc_port_of(ready_line: str) -> int:
    """The gRPC port from the line the server logs once every worker listens."""
    match = _ALL_READY.search(ready_line)
    if match is None:
        raise BenchmarkError(f"no gRPC port in {ready_line!r}")
    return int(match[2])


def measure_memory(
    repository: Path, model: str, round_: int, threads: int, workers: int, timeout_s: float
) -> tuple[MemoryRun, RestartRun | None]:
    """Start one configuration, warm every worker, read its memory; restart one worker.

    The restart is timed for the generated model with ``RESTART_WORKERS`` workers only.
    """
    port = free_port(HOST)
    base_url = f"http://{HOST}:{port}"
    if model == BIG_MODEL:
        request, is_expected = big_request(base_url), answers_big
    else:
        request, is_expected = _v2(base_url, "iris", V2_PAYLOAD), v2_predicts_class_0
    log_path = WORK_DIR / "logs" / f"workers-mem-{model}-t{threads}-w{workers}-{round_}.log"
    argv = server_argv(repository, port, workers, threads)
    with ServerProcess(
        argv, f"{base_url}/v2/health/ready", log_path=log_path, cwd=ROOT, core="0-1"
    ) as server:
        launched = time.monotonic()
        first_ready_s = server.start(timeout_s=timeout_s)
        ready_line = wait_for_log(server, _ALL_READY, timeout_s)
        all_ready_at = time.monotonic()
        all_ready_s = all_ready_at - launched
        if workers > 1 and len(children(server.pid)) != workers:
            raise BenchmarkError(f"expected {workers} workers, found {children(server.pid)}")
        worker_cpu_s = warm_workers(server, request, workers, is_expected)
        if model == BIG_MODEL and not all(worker_cpu_s):
            print(f"  warning: a worker used no CPU during warm-up: {worker_cpu_s}", flush=True)
        processes = memory_of(server, workers)
        memory = MemoryRun(
            model, round_, threads, workers, processes,
            distinct_mib([p.pid for p in processes]), first_ready_s, all_ready_s, worker_cpu_s,
        )  # fmt: skip
        restart = None
        if model == BIG_MODEL and workers == RESTART_WORKERS:
            # The supervisor waits _RESTART_BACKOFF_S (1 s) before replacing a worker that
            # died younger than that; a worker killed in service is older.
            time.sleep(max(0.0, RESTART_MIN_AGE_S - (time.monotonic() - all_ready_at)))
            ports = (port, grpc_port_of(ready_line))
            restart = measure_restart(server, request, ports, round_, threads, timeout_s)
    return memory, restart


def measure_restart(
    server: ServerProcess,
    request: HttpRequest,
    ports: tuple[int, int],
    round_: int,
    threads: int,
    timeout_s: float,
) -> RestartRun:
    """SIGKILL one worker and time its replacement: logged, forked, listening, serving.

    A worker binds and listens on the HTTP port before it loads anything, so the kernel
    queues connections to it from then on; it starts its gRPC server after its HTTP
    server runs, so N gRPC listeners mean the new worker answers.
    """
    port, grpc_port = ports
    workers = children(server.pid)
    wait_until(
        lambda: listening_sockets(grpc_port) == len(workers), timeout_s, "every worker to listen"
    )
    killed = time.monotonic()
    os.kill(workers[0], signal.SIGKILL)
    stamps: dict[str, float] = {}

    def replaced() -> bool:
        now = time.monotonic() - killed
        if "logged" not in stamps and _RESTARTING.search(
            server.log_path.read_text("utf-8", "replace")
        ):
            stamps["logged"] = now
        if "forked" not in stamps and set(children(server.pid)) - set(workers):
            stamps["forked"] = now
        # Only once the new process exists: the killed one's socket may linger a moment.
        if (
            "forked" in stamps
            and "listening" not in stamps
            and listening_sockets(port) == len(workers)
        ):
            stamps["listening"] = now
        if (
            "forked" in stamps
            and "serving" not in stamps
            and listening_sockets(grpc_port) == len(workers)
        ):
            stamps["serving"] = now
        return len(stamps) == 4

    wait_until(replaced, timeout_s, "the worker's replacement")
    warm_workers(server, request, len(workers))
    processes = memory_of(server, len(workers))
    return RestartRun(
        round_, threads, stamps["logged"], stamps["forked"], stamps["listening"],
        stamps["serving"], sum(p.pss_kib for p in processes) / _KIB_PER_MIB,
        distinct_mib([p.pid for p in processes]),
    )  # fmt: skip


# --- scaling ------------------------------------------------------------------------------------


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


def scaling_round(
    round_index: int, options: argparse.Namespace, runs: list[Run], failures: list[str]
) -> None:
    """Start both layouts, then load them back to back per model and concurrency."""
    round_ = round_index + 1
    order = rotated(LAYOUTS, round_index)
    with contextlib.ExitStack() as stack:
        live: dict[str, tuple[ServerProcess, str]] = {}
        for layout in order:
            port = free_port(HOST)
            base_url = f"http://{HOST}:{port}"
            argv = [
                *server_argv(MODELS, port, layout.workers, 1),
                "--batch", "mlp:max_batch_size=0",
            ]  # fmt: skip
            log_path = WORK_DIR / "logs" / f"workers-scale-{layout.workers}w-{round_}.log"
            server = stack.enter_context(
                ServerProcess(
                    argv,
                    f"{base_url}/v2/health/ready",
                    log_path=log_path,
                    cwd=ROOT,
                    core=layout.server_cpus,
                )
            )
            print(f"round {round_}: starting {layout.name}: {' '.join(server.argv)}", flush=True)
            try:
                server.start(timeout_s=options.ready_timeout)
                wait_for_log(server, _ALL_READY, options.ready_timeout)
                for model, (payload, is_expected) in SCALING_MODELS.items():
                    check_answer(_v2(base_url, model, payload), is_expected)
            except BenchmarkError as error:
                failures.append(f"round {round_}: {layout.name}: {error}")
                print(f"round {round_}: {layout.name} FAILED: {error}", flush=True)
                server.stop()
                continue
            live[layout.name] = (server, base_url)
        for model, (payload, _) in rotated(list(SCALING_MODELS.items()), round_index):
            for c in options.concurrency:
                for layout in order:
                    if layout.name not in live:
                        continue
                    server, base_url = live[layout.name]
                    try:
                        measurement = measure(
                            server,
                            _v2(base_url, model, payload),
                            connections=c,
                            duration_s=options.duration,
                            warmup_s=options.warmup,
                            load_core=layout.wrk_cpus,
                        )
                    except BenchmarkError as error:
                        failures.append(f"round {round_}: {layout.name}: {error}")
                        live.pop(layout.name)[0].stop()
                        continue
                    runs.append(Run(f"{model}, {layout.name}", round_, c, measurement))
                    print(
                        f"round {round_}: {model:<4} c={c:<3} {layout.name:<9} "
                        f"{measurement.load.requests_per_s:7.0f} req/s",
                        flush=True,
                    )


def _v2(base_url: str, model: str, payload: Mapping[str, object]) -> HttpRequest:
    return HttpRequest(
        "POST", f"{base_url}/v2/models/{model}/infer", json.dumps(payload).encode(), JSON_HEADERS
    )


def ensure_mlp() -> None:
    """Build examples/models/mlp when missing (``make`` builds it too)."""
    if not MLP_MODEL.exists():
        command = [sys.executable, str(MLP_BUILD_SCRIPT), "--out", str(MODELS)]
        print(f"building the mlp model: {' '.join(command)}", flush=True)
        subprocess.run(command, cwd=ROOT, check=True)


# --- reports ------------------------------------------------------------------------------------


@dataclass
class Results:
    model_bytes: int = 0
    memory: list[MemoryRun] = field(default_factory=list)
    restarts: list[RestartRun] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


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


# --- the run ------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=_positive_int, default=3, help="rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of load before each run (default 1)"
    )
    parser.add_argument(
        "--concurrency",
        default="64",
        type=lambda text: [int(c) for c in text.split(",")],
        help="comma-separated wrk connection counts for scaling (default 64)",
    )
    parser.add_argument(
        "--model-mb", type=float, default=90.0, help="weights of the generated model (default 90)"
    )
    parser.add_argument(
        "--skip",
        default="",
        type=lambda text: [part for part in text.split(",") if part],
        help="comma-separated parts to leave out: memory, scaling",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds to become ready (default 120)"
    )
    parser.add_argument("--json", type=Path, help="write every number and the machine here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown report here")
    return parser.parse_args(argv)


def run_memory(options: argparse.Namespace, results: Results) -> None:
    configs = [
        (model, threads, workers) for model, threads in MEMORY_CONFIGS for workers in MEMORY_WORKERS
    ]
    with tempfile.TemporaryDirectory(prefix="ligeiro-workers-") as folder:
        repositories = {BIG_MODEL: Path(folder, "big-repo"), "iris": Path(folder, "iris-repo")}
        results.model_bytes = build_big_model(
            repositories[BIG_MODEL] / BIG_MODEL / "1" / "model.onnx", options.model_mb * 1e6
        )
        shutil.copytree(MODELS / "iris", repositories["iris"] / "iris")
        print(f"generated {results.model_bytes / 1e6:.1f} MB of weights in {folder}", flush=True)
        for round_index in range(options.rounds):
            for model, threads, workers in rotated(configs, round_index):
                try:
                    memory, restart = measure_memory(
                        repositories[model], model, round_index + 1, threads, workers,
                        options.ready_timeout,
                    )  # fmt: skip
                except BenchmarkError as error:
                    results.failures.append(
                        f"round {round_index + 1}: {model} t{threads} w{workers}: {error}"
                    )
                    print(f"  FAILED: {error}", flush=True)
                    continue
                results.memory.append(memory)
                if restart is not None:
                    results.restarts.append(restart)
                print(
                    f"round {round_index + 1}: {model} threads={threads} workers={workers}: "
                    f"PSS {memory.pss_mib:.1f} MiB, RSS {memory.rss_mib:.1f} MiB, "
                    f"ready {memory.all_ready_s:.2f} s"
                    + (f", restart serving {restart.serving_s:.2f} s" if restart else ""),
                    flush=True,
                )


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m benchmarks.bench_workers"
) -> int:
    """Run the benchmark; return 1 when anything failed, so a smoke run notices."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([prog, *argv])
    options = parse_args(argv, prog)
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_workers needs two cores")
    os.sched_setaffinity(0, {LOAD_CORE})  # this process only waits and sends a few requests
    results = Results()
    with exclusive_machine():
        ensure_tools()
        ensure_models()
        ensure_mlp()
        machine = machine_info(PACKAGES)
        started = time.monotonic()
        if "memory" not in options.skip:
            run_memory(options, results)
        if "scaling" not in options.skip:
            for round_index in range(options.rounds):
                scaling_round(round_index, options, results.runs, results.failures)
        print(f"done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    print("\n" + render(results, options, markdown=False))
    report = f"{markdown_heading(machine, command)}\n\n{render(results, options, markdown=True)}\n"
    if options.markdown:
        write_report(options.markdown, report)
    if options.json:
        document = {
            "benchmark": "workers",
            "command": command,
            "machine": dataclasses.asdict(machine),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
            "model_bytes": results.model_bytes,
            "memory": [dataclasses.asdict(m) for m in results.memory],
            "restarts": [dataclasses.asdict(r) for r in results.restarts],
            "growth_mib": {
                f"{model}, threads={threads}": growth(results, threads, model)
                for model, threads in MEMORY_CONFIGS
            },
            "runs": [dataclasses.asdict(run) for run in results.runs],
            "ratios": scaling_ratios(results),
            "failures": results.failures,
        }
        write_report(options.json, json.dumps(document, indent=2) + "\n")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
