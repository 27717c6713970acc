"""Iris end to end: ligeiro beside the seed article's two FastAPI servers, in one run.

The seed article (003) served one sklearn pipeline three ways and compared them under
load. This runs its two Python servers (FastAPI + pickle, FastAPI + ONNX Runtime) and
ligeiro on the same model, each as one process on core 0 with wrk on core 1, at a few
concurrencies, and prints throughput, latency, CPU per request, peak memory, start-up
time and ligeiro's throughput ratio to each baseline. The machine is shared and noisy:
the ratios, measured minutes apart on the same machine, are the numbers that hold.

Every server's answer to the payload is checked once before it is loaded, so a server
that answers errors fast is never mistaken for a fast server.

Run: ``python -m benchmarks.bench_iris [--duration 10] [--concurrency 1,16,64]
[--servers ligeiro-v2,fastapi-onnx] [--json PATH] [--markdown PATH]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._harness import (
    LOAD_CORE,
    BenchmarkError,
    HttpRequest,
    Machine,
    Measurement,
    ServerProcess,
    ensure_tools,
    exclusive_machine,
    format_table,
    free_port,
    http_call,
    machine_info,
    measure,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

ROOT: Final = Path(__file__).resolve().parent.parent
WORK_DIR: Final = ROOT / ".bench"
MODELS: Final = ROOT / "examples" / "models"
ONNX_MODEL: Final = MODELS / "iris" / "1" / "model.onnx"
PICKLE: Final = WORK_DIR / "iris.joblib"
BUILD_SCRIPT: Final = ROOT / "examples" / "build_iris.py"
HOST: Final = "127.0.0.1"
JSON_HEADERS: Final = {"Content-Type": "application/json"}
PACKAGES: Final = (
    "ligeiro", "onnxruntime", "numpy", "msgspec", "uvloop", "httptools", "granian",
    "fastapi", "starlette", "pydantic", "uvicorn", "scikit-learn", "joblib",
)  # fmt: skip

# The seed's payload: an Iris setosa from the dataset's first row, so every server must
# answer class 0 / "iris-setosa".
SEED_PAYLOAD: Final = {
    "sepal_length": 5.1,
    "sepal_width": 3.5,
    "petal_length": 1.4,
    "petal_width": 0.2,
}
V2_PAYLOAD: Final = {
    "inputs": [
        {"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}
EXPECTED_LABEL: Final = "iris-setosa"
OTHER_LABELS: Final = frozenset({"iris-versicolor", "iris-virginica"})


def _string_values(document: object) -> list[str]:
    """Every string value (not key) in a decoded JSON document."""
    if isinstance(document, str):
        return [document]
    if isinstance(document, dict):
        document = list(document.values())
    if isinstance(document, list):
        return [text for item in document for text in _string_values(item)]
    return []


def names_setosa(answer: object) -> bool:
    """The answer names iris-setosa and no other class as a value.

    Class names may also appear as keys of a probability map; only values count, so
    the check does not depend on how a server lays out its probabilities.
    """
    values = set(_string_values(answer))
    return EXPECTED_LABEL in values and not values & OTHER_LABELS


def v2_predicts_class_0(answer: object) -> bool:
    """The V2 response's ``output_label`` tensor holds class 0."""
    outputs = answer.get("outputs", []) if isinstance(answer, dict) else []
    return any(
        output.get("name") == "output_label" and output.get("data", [None])[0] == 0
        for output in outputs
        if isinstance(output, dict)
    )


@dataclass(frozen=True)
class Target:
    """A server command and the request that loads it: one group of rows in the table."""

    name: str
    command: tuple[str, ...]  # "{port}" is replaced by the port the server must bind
    ready_path: str
    path: str
    payload: Mapping[str, object]
    is_expected: Callable[[object], bool]
    is_baseline: bool
    env: Mapping[str, str] = field(default_factory=dict)


_ONE_WORKER: Final = ("--host", HOST, "--port", "{port}", "--workers", "1")


def _uvicorn(module: str) -> tuple[str, ...]:
    """The baseline run as a user would: the uvicorn CLI with its defaults, one worker."""
    return (sys.executable, "-m", "uvicorn", f"benchmarks.baselines.{module}:app", *_ONE_WORKER)


def _ligeiro() -> tuple[str, ...]:
    """ligeiro's own CLI from the same virtual environment, one worker."""
    executable = str(Path(sys.executable).with_name("ligeiro"))
    return (executable, "serve", str(MODELS), *_ONE_WORKER)


def targets() -> dict[str, Target]:
    """The four targets by name, in the order they run."""
    all_targets = (
        Target("fastapi-pickle", _uvicorn("fastapi_pickle"), "/health", "/predict",
               SEED_PAYLOAD, names_setosa, is_baseline=True, env={"IRIS_PICKLE": str(PICKLE)}),
        Target("fastapi-onnx", _uvicorn("fastapi_onnx"), "/health", "/predict",
               SEED_PAYLOAD, names_setosa, is_baseline=True, env={"IRIS_ONNX": str(ONNX_MODEL)}),
        Target("ligeiro-v2", _ligeiro(), "/v2/health/ready", "/v2/models/iris/infer",
               V2_PAYLOAD, v2_predicts_class_0, is_baseline=False),
        Target("ligeiro-predict", _ligeiro(), "/v2/health/ready", "/v1/models/iris:predict",
               SEED_PAYLOAD, names_setosa, is_baseline=False),
    )  # fmt: skip
    return {target.name: target for target in all_targets}


@dataclass
class TargetResult:
    """Everything measured for one target; ``error`` says why a target has no numbers."""

    name: str
    startup_s: float | None = None
    measurements: list[Measurement] = field(default_factory=list)
    error: str | None = None


def ensure_models() -> None:
    """Build the ONNX model and the baseline's pickle when missing or older than the script.

    When the ONNX model already exists, the pickle is built beside a throw-away copy
    under ``.bench/`` rather than rewriting ``examples/models`` under a running server.
    The training is seeded, so the two hold the same fitted pipeline: the ONNX bytes
    differ between builds, but labels and probabilities agree with the pickle's.
    """
    is_fresh = PICKLE.exists() and PICKLE.stat().st_mtime >= BUILD_SCRIPT.stat().st_mtime
    if ONNX_MODEL.exists() and is_fresh:
        return
    out = WORK_DIR / "models" if ONNX_MODEL.exists() else MODELS
    command = [sys.executable, str(BUILD_SCRIPT), "--out", str(out), "--pickle", str(PICKLE)]
    print(f"building the iris model: {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def verify(target: Target, request: HttpRequest) -> None:
    """Send the payload once and check the answer, so errors are never benchmarked.

    Raises:
        BenchmarkError: no answer, a non-200 status, or not the expected class.
    """
    try:
        status, body = http_call(request)
        answer = json.loads(body)
    except (OSError, ValueError) as error:
        raise BenchmarkError(f"{request.method} {request.url} failed: {error}") from None
    if status != 200 or not target.is_expected(answer):
        raise BenchmarkError(
            f"{request.method} {request.url}: expected 200 naming {EXPECTED_LABEL} (class 0), "
            f"got {status}: {body[:300].decode(errors='replace')}"
        )


def run_target(target: Target, options: argparse.Namespace) -> TargetResult:
    """Start the target's server, check it, load it at each concurrency, stop it."""
    port = free_port(HOST)
    base_url = f"http://{HOST}:{port}"
    request = HttpRequest(
        "POST", base_url + target.path, json.dumps(target.payload).encode(), JSON_HEADERS
    )
    server = ServerProcess(
        [argument.format(port=port) for argument in target.command],
        base_url + target.ready_path,
        log_path=WORK_DIR / "logs" / f"{target.name}.log",
        cwd=ROOT,
        env=target.env,
    )
    result = TargetResult(target.name)
    print(f"{target.name}: starting {' '.join(server.argv)}", flush=True)
    try:
        with server:
            result.startup_s = server.start(timeout_s=options.ready_timeout)
            verify(target, request)
            for connections in options.concurrency:
                measurement = measure(
                    server,
                    request,
                    connections=connections,
                    duration_s=options.duration,
                    warmup_s=options.warmup,
                )
                result.measurements.append(measurement)
                print(
                    f"  c={connections:<3} {measurement.load.requests_per_s:9.0f} req/s", flush=True
                )
    except BenchmarkError as error:
        result.error = str(error)
        print(f"{target.name}: FAILED: {error}", flush=True)
    return result


# --- reports ------------------------------------------------------------------------------

RESULT_HEADERS: Final = (
    "server", "c", "req/s", "p50 ms", "p90 ms", "p99 ms",
    "CPU µs/req", "peak RSS MiB", "start-up s", "errors",
)  # fmt: skip


def result_rows(results: Sequence[TargetResult]) -> list[list[str]]:
    """One row per target and concurrency; start-up time on each target's first row."""
    rows = []
    for result in results:
        if result.error is not None and not result.measurements:
            rows.append([result.name, "-", "failed", *[""] * (len(RESULT_HEADERS) - 3)])
            continue
        for i, m in enumerate(result.measurements):
            startup = f"{result.startup_s:.2f}" if i == 0 and result.startup_s else ""
            load = m.load
            rows.append([
                result.name, str(load.connections), f"{load.requests_per_s:.0f}",
                f"{load.p50_ms:.2f}", f"{load.p90_ms:.2f}", f"{load.p99_ms:.2f}",
                f"{m.cpu_us_per_request:.0f}", f"{m.peak_rss_mib:.1f}", startup,
                str(load.non_2xx + load.socket_errors),
            ])  # fmt: skip
    return rows


def throughput_ratios(
    results: Sequence[TargetResult], all_targets: Mapping[str, Target]
) -> dict[str, dict[int, float]]:
    """ligeiro's req/s divided by each baseline's, per concurrency, where both ran."""
    by_name = {result.name: result for result in results if result.measurements}
    ratios: dict[str, dict[int, float]] = {}
    for ours in (by_name[n] for n in by_name if not all_targets[n].is_baseline):
        for theirs in (by_name[n] for n in by_name if all_targets[n].is_baseline):
            rates = {m.load.connections: m.load.requests_per_s for m in theirs.measurements}
            ratios[f"{ours.name} / {theirs.name}"] = {
                m.load.connections: m.load.requests_per_s / rates[m.load.connections]
                for m in ours.measurements
                if rates.get(m.load.connections)
            }
    return ratios


def render(
    results: Sequence[TargetResult],
    ratios: Mapping[str, Mapping[int, float]],
    concurrency: Sequence[int],
    *,
    markdown: bool,
) -> str:
    """The results table, the ratio table, and any failures, as text or Markdown."""
    parts = [format_table(RESULT_HEADERS, result_rows(results), markdown=markdown)]
    if ratios:
        headers = ["req/s ratio", *(f"c={c}" for c in concurrency)]
        rows = [
            [pair, *(f"{by_c[c]:.2f}x" if c in by_c else "-" for c in concurrency)]
            for pair, by_c in ratios.items()
        ]
        parts.append(format_table(headers, rows, markdown=markdown))
    parts += [
        f"{result.name} failed: {result.error.splitlines()[0]}"
        for result in results
        if result.error is not None
    ]
    return "\n\n".join(parts)


def markdown_heading(machine: Machine, command: str) -> str:
    """The context a published table needs: command, machine, versions, date."""
    return (
        f"Measured {machine.date} with `{command}` on {machine.summary()}. "
        "Each server is one process pinned to core 0; wrk runs on core 1."
    )


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    names = list(targets())
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency",
        default="1,16,64",
        type=lambda text: [int(c) for c in text.split(",")],
        help="comma-separated connection counts (default 1,16,64)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each run")
    parser.add_argument(
        "--servers",
        default=",".join(names),
        type=lambda text: text.split(","),
        help=f"comma-separated subset of {','.join(names)}",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds a server may take to become ready",
    )
    parser.add_argument("--json", type=Path, help="write every number and the machine here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown report here")
    args = parser.parse_args(argv)
    if unknown := set(args.servers) - set(names):
        parser.error(f"unknown server(s) {', '.join(sorted(unknown))}; choose from {names}")
    return args


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "python -m benchmarks.bench_iris",
    report_stem: Path | None = None,
) -> int:
    """Run the benchmark; return 1 when any target failed, so a smoke run notices.

    Args:
        argv: the command-line arguments (default ``sys.argv[1:]``).
        prog: how the user invoked it, recorded with the results.
        report_stem: write ``<stem>.json`` and ``<stem>.md`` unless ``--json`` or
            ``--markdown`` name other paths.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([prog, *argv])
    options = parse_args(argv, prog)
    if report_stem is not None:
        options.json = options.json or report_stem.with_suffix(".json")
        options.markdown = options.markdown or report_stem.with_suffix(".md")
    all_targets = targets()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_iris needs two cores: one for the server, one for wrk")
    # This process only waits on wrk; keep it off the server's core too.
    os.sched_setaffinity(0, {LOAD_CORE})
    with exclusive_machine():
        ensure_tools()
        ensure_models()
        machine = machine_info(PACKAGES)
        results = [run_target(all_targets[name], options) for name in options.servers]
    ratios = throughput_ratios(results, all_targets)
    print("\n" + render(results, ratios, options.concurrency, markdown=False))
    tables = render(results, ratios, options.concurrency, markdown=True)
    report = f"{markdown_heading(machine, command)}\n\n{tables}\n"
    print(f"\nMarkdown (for docs/benchmarks.md):\n\n{report}")
    if options.markdown:
        _write(options.markdown, report)
    if options.json:
        document = {
            "benchmark": "iris",
            "command": command,
            "machine": dataclasses.asdict(machine),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
            "results": [dataclasses.asdict(result) for result in results],
            "ratios": ratios,
        }
        _write(options.json, json.dumps(document, indent=2) + "\n")
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
