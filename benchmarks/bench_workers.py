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
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from ._harness import (
    HOST,
    LIGEIRO,
    LOAD_CORE,
    MODELS,
    ROOT,
    WORK_DIR,
    BenchmarkError,
    HttpRequest,
    ServerProcess,
    add_duration_options,
    add_report_options,
    ensure_example,
    ensure_tools,
    exclusive_machine,
    expect_answer,
    free_port,
    int_list,
    machine_info,
    positive_int,
    run_document,
    v2_request,
    wait_for_log,
    wait_until,
    write_report,
)
from ._iris import V2_PAYLOAD, ensure_models, v2_predicts_class_0
from ._models import BIG_INPUTS, BIG_OUTPUTS, build_big_model
from ._procfs import ProcessMemory, children, cpu_ticks, distinct_mib, listening_sockets
from ._rounds import Run, rotated
from ._workers import (
    BIG_MODEL,
    KIB_PER_MIB,
    LAYOUTS,
    MEMORY_CONFIGS,
    MEMORY_WORKERS,
    RESTART_WORKERS,
    SCALING_MODELS,
    MemoryRun,
    RestartRun,
    Results,
    growth,
    markdown_heading,
    render,
    scaling_ratios,
)
from ._wrk import measure

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


logger = logging.getLogger(__name__)

PACKAGES: Final = ("ligeiro", "onnxruntime", "onnx", "numpy", "msgspec", "uvloop", "grpcio")
MLP_BUILD_SCRIPT: Final = ROOT / "examples" / "build_mlp.py"

# --- the generated model --------------------------------------------------------------------

BIG_BATCH: Final = 4  # rows per warm-up request


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
    return v2_request(base_url, BIG_MODEL, body)


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


# --- memory, start-up and restart -------------------------------------------------------------

_ALL_READY: Final = re.compile(r"serving (on|\d+ model version).* and grpc://\S+:(\d+)")
_RESTARTING: Final = re.compile(r"exited with .*; restarting")
WARM_REQUESTS: Final = 50
RESTART_MIN_AGE_S: Final = 2.0

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
        # urllib opens a new connection every time.
        expect_answer(request, is_expected, timeout_s=30.0)
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
        request, is_expected = v2_request(base_url, "iris", V2_PAYLOAD), v2_predicts_class_0
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
        stamps["serving"], sum(p.pss_kib for p in processes) / KIB_PER_MIB,
        distinct_mib([p.pid for p in processes]),
    )  # fmt: skip


# --- scaling ------------------------------------------------------------------------------------


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
                    expect_answer(v2_request(base_url, model, payload), is_expected, timeout_s=30.0)
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
                            v2_request(base_url, model, payload),
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


# --- the run ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds (default 3)")
    add_duration_options(parser)
    parser.add_argument(
        "--concurrency",
        default="64",
        type=int_list,
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
    add_report_options(parser)
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
        ensure_example("mlp", MLP_BUILD_SCRIPT)
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
            **run_document("workers", command, machine, options),
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
