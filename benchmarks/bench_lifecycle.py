"""Hot swaps under load: how long a swap takes, how long the old version drains, and
what the clients see.

One ``ligeiro serve --model-control explicit`` (one worker, pinned to core 0) serves a
copy of a model whose config says ``version_policy = { latest = 1 }``. wrk loads it
from core 1 for ``--duration`` seconds at ``--connections``; meanwhile, every
``--every`` seconds, a new version folder appears (a copy of the model's file) and
``POST /v2/repository/models/{m}/load`` swaps it in: the call returns once every
worker loaded the new version, warmed it up and switched to it (the swap time); the old
version then finishes its requests and is unloaded (the drain time, read from the
server's log line ``drained and unloaded ... in S s``). A second wrk run of the same
length without swaps gives the latency to compare with.

Cases: ``iris`` (the seed's pipeline, 2 KB of ONNX) and ``text`` (the all-MiniLM-L6-v2
encoder, 90 MB, swapped under its ``minilm`` pipeline, which is rebuilt on the new
encoder; needs ``make models``).

Run: ``python -m benchmarks.bench_lifecycle [--case iris|text|all] [--duration 20]
[--every 2] [--connections 8] [--markdown PATH] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._harness import (
    HOST,
    LIGEIRO,
    LOAD_CORE,
    MODELS,
    BenchmarkError,
    HttpRequest,
    ServerProcess,
    ensure_tools,
    exclusive_machine,
    format_table,
    free_port,
    http_call,
    machine_info,
    write_report,
)
from ._iris import V2_JSON
from ._wrk import LoadResult, run_wrk

if TYPE_CHECKING:
    from collections.abc import Sequence

TOKEN: Final = "bench-admin-token"
PACKAGES: Final = ("ligeiro", "onnxruntime", "numpy", "msgspec", "uvloop", "httptools")
SENTENCE: Final = "I love you. I like you. I am your friend."
_DRAINED = re.compile(r"drained and unloaded .* in ([\d.]+) s")


@dataclass(frozen=True)
class Case:
    """What to copy, which model to swap, and what to send."""

    name: str
    models: tuple[str, ...]  # folders copied from examples/models
    swapped: str  # the model that gets new versions
    target: str  # the model the load calls
    body: bytes


CASES: Final = {
    "iris": Case(
        "iris",
        ("iris",),
        "iris",
        "iris",
        V2_JSON,
    ),
    "text": Case(
        "text",
        ("text-tokenizer", "minilm-encoder", "minilm"),
        "minilm-encoder",
        "minilm",
        json.dumps(
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCE]}]}
        ).encode(),
    ),
}


@dataclass(frozen=True)
class Outcome:
    case: str
    swaps: int
    swap_s: list[float]
    drain_s: list[float]
    failed_swaps: int
    with_swaps: LoadResult
    without: LoadResult


def _repository(case: Case, folder: Path) -> Path:
    root = folder / "models"
    for name in case.models:
        source = MODELS / name
        if not source.is_dir():
            raise BenchmarkError(f"{source} is missing: run `make models` first")
        shutil.copytree(source, root / name, symlinks=False)
    config = root / case.swapped / "config.toml"
    text = config.read_text() if config.exists() else ""
    config.write_text(text + "\nversion_policy = { latest = 1 }\n")
    return root


def _swap(root: Path, case: Case, version: int, port: int) -> float:
    """Add version ``version`` (a copy of version 1) and load it; the call's seconds."""
    folder = root / case.swapped
    staging = folder / f".staging-{version}"
    shutil.copytree(_source(folder), staging)
    staging.rename(folder / str(version))
    request = HttpRequest(
        "POST",
        f"http://{HOST}:{port}/v2/repository/models/{case.swapped}/load",
        b"{}",
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    started = time.perf_counter()
    status, body = http_call(request, timeout_s=120)
    seconds = time.perf_counter() - started
    if status != 200:
        raise BenchmarkError(f"load of {case.swapped} version {version}: {status} {body!r}")
    return seconds


def _source(folder: Path) -> Path:
    """The lowest version folder on disk: every new version copies it."""
    versions = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    return folder / str(versions[0])


def run_case(case: Case, options: argparse.Namespace, folder: Path) -> Outcome:
    root = _repository(case, folder)
    # The copies stay on disk (the policy loads only the latest): keep version 1 around.
    port = free_port(HOST)
    argv = [
        LIGEIRO,
        "serve",
        str(root),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--threads",
        "1",
        "--grpc-port",
        "0",
        "--model-control",
        "explicit",
    ]
    log = folder / f"{case.name}.log"
    request = HttpRequest(
        "POST",
        f"http://{HOST}:{port}/v2/models/{case.target}/infer",
        case.body,
        {"Content-Type": "application/json"},
    )
    with ServerProcess(
        argv,
        f"http://{HOST}:{port}/v2/health/ready",
        log_path=log,
        env={"LIGEIRO_ADMIN_TOKEN": TOKEN},
    ) as server:
        server.start(timeout_s=120)
        run_wrk(request, connections=options.connections, duration_s=2)  # warm-up
        without = run_wrk(request, connections=options.connections, duration_s=options.duration)
        swaps: list[float] = []
        failures: list[str] = []
        stop = threading.Event()

        def swapper() -> None:
            version = 2
            while not stop.wait(options.every):
                try:
                    swaps.append(_swap(root, case, version, port))
                except (BenchmarkError, OSError) as exc:
                    failures.append(str(exc))
                version += 1

        thread = threading.Thread(target=swapper, daemon=True)
        thread.start()
        try:
            with_swaps = run_wrk(
                request, connections=options.connections, duration_s=options.duration
            )
        finally:
            stop.set()
            thread.join(180)
        server.check_running()
    drains = [float(m.group(1)) for m in _DRAINED.finditer(log.read_text(errors="replace"))]
    if failures:
        print(f"{case.name}: {len(failures)} failed swap(s): {failures[0]}", file=sys.stderr)
    return Outcome(case.name, len(swaps), swaps, drains, len(failures), with_swaps, without)


def _ms(seconds: Sequence[float]) -> str:
    if not seconds:
        return "-"
    return f"{statistics.median(seconds) * 1e3:.0f} / {max(seconds) * 1e3:.0f}"


def render(outcomes: Sequence[Outcome], *, markdown: bool) -> str:
    rows = [
        [
            o.case,
            str(o.swaps),
            _ms(o.swap_s),
            _ms(o.drain_s),
            f"{o.with_swaps.requests:,}",
            str(o.with_swaps.non_2xx + o.with_swaps.socket_errors),
            f"{o.with_swaps.p99_ms:.1f} / {o.without.p99_ms:.1f}",
            f"{o.with_swaps.requests_per_s:,.0f} / {o.without.requests_per_s:,.0f}",
        ]
        for o in outcomes
    ]
    headers = [
        "case",
        "swaps",
        "swap ms (median / max)",
        "drain ms (median / max)",
        "requests",
        "failed",
        "p99 ms (swaps / none)",
        "req/s (swaps / none)",
    ]
    return format_table(headers, rows, markdown=markdown)


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per run")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between swaps")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m benchmarks.bench_lifecycle"
) -> int:
    """Run the swap benchmark; 1 when a request or a swap failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    options = parse_args(argv, prog)
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_lifecycle needs two cores: one for the server, one for the load")
    cases = [c for n, c in CASES.items() if options.case in (n, "all")]
    with exclusive_machine(), tempfile.TemporaryDirectory(prefix="ligeiro-lifecycle-") as tmp:
        ensure_tools()
        machine = machine_info(PACKAGES)
        os.sched_setaffinity(0, {LOAD_CORE})
        outcomes = []
        for case in cases:
            if case.name == "text" and not (MODELS / "minilm-encoder").is_dir():
                print("text: skipped (examples/models/minilm-encoder missing: make models)")
                continue
            outcomes.append(run_case(case, options, Path(tmp)))
    print("\n" + render(outcomes, markdown=False))
    report = (
        f"`{' '.join([prog, *argv])}`, {machine.summary()}\n\n{render(outcomes, markdown=True)}\n"
    )
    print(f"\nMarkdown (for docs/benchmarks.md):\n\n{report}")
    if options.markdown:
        write_report(options.markdown, report)
    if options.json:
        write_report(
            options.json,
            json.dumps(
                {
                    "benchmark": "lifecycle",
                    "command": argv,
                    "outcomes": [asdict(o) for o in outcomes],
                },
                indent=2,
            ),
        )
    failed = any(
        o.failed_swaps or o.with_swaps.non_2xx or o.with_swaps.socket_errors for o in outcomes
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
