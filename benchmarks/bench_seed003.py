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
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._harness import (
    HOST,
    JSON_HEADERS,
    LIGEIRO,
    MODELS,
    ROOT,
    SERVER_CORE,
    WORK_DIR,
    BenchmarkError,
    HttpRequest,
    ServerProcess,
    cpu_model,
    exclusive_machine,
    free_port,
    write_report,
)
from ._iris import PACKAGES, PICKLE, ensure_models
from ._seed003 import (
    CPU_PERIOD_US,
    CPU_QUOTA_US,
    MEMORY_LIMIT,
    MLSERVER_TEMPLATE,
    RETRY_MEMORY_LIMIT,
    SAMPLE_S,
    SEED_STAGES,
    SEED_TEMPLATE,
    SHARES,
    V2_TEMPLATE,
    Cgroup,
    Load,
    Sampler,
    capacity_search,
    stages_argument,
)
from ._seed003_report import render
from ._targets import Target, targets, verify

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

# ligeiro as the image runs it: one worker, one ONNX Runtime thread, gRPC on; one model.
LIGEIRO_ARGS: Final = ("--workers", "1", "--threads", "1", "--grpc-port", "0")
# ligeiro answers the seed's payload on :predict; ligeiro-v2 is the same server on V2 infer.
SERVERS: Final = ("fastapi-pickle", "fastapi-onnx", "ligeiro", "ligeiro-v2")
_TARGETS: Final = {"ligeiro": "ligeiro-predict"}
# MLServer (``--mlserver PATH``, in its own venv) as a user would start it on the pickle.
MLSERVER: Final = "mlserver"


class OomAtStart(BenchmarkError):
    """The server was OOM-killed before it was ready: its start needs more than the limit."""

    def __init__(self, limit: int, peak: int) -> None:
        super().__init__(f"OOM-killed before ready under {limit / 2**20:.0f} MiB "
                         f"(cgroup peak {peak / 2**20:.0f} MiB)")  # fmt: skip
        self.limit, self.peak = limit, peak


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
        return [LIGEIRO, "serve", str(MODELS / "iris"),
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
            "cpu_model": cpu_model(), "kernel": platform.release(),
            "load_average_1m": os.getloadavg()[0], "python": platform.python_version(),
            "packages": versions}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
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
