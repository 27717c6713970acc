"""Targets: a server command and the request that loads it, started and checked in rounds.

A ``Target`` is one group of rows in a results table: the command that starts a server
(``{port}`` stands for the port it must bind), its readiness path, and the request that
loads it with the check its answer must pass. ``start_target`` starts one pinned to
core 0 and checks its answer; ``run_round`` starts every target of a round, then loads
them back to back at each concurrency (``_rounds.py`` keeps the record). ``targets``
holds the iris servers ``bench_iris`` compares and ``bench_seed003`` limits.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ._harness import (
    HOST,
    JSON_HEADERS,
    LIGEIRO,
    ROOT,
    WORK_DIR,
    BenchmarkError,
    HttpRequest,
    ServerProcess,
    expect_answer,
    free_port,
)
from ._iris import (
    EXPECTED_LABEL,
    IRIS_REPOSITORY,
    ONNX_MODEL,
    PICKLE,
    SEED_PAYLOAD,
    V2_PAYLOAD,
    names_setosa,
    v2_predicts_class_0,
)
from ._rounds import Rounds, Run, Startup, rotated
from ._wrk import measure

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

__all__ = [
    "LiveServer",
    "Target",
    "ligeiro_command",
    "run_round",
    "start_target",
    "start_targets",
    "targets",
    "uvicorn_command",
    "verify",
]


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
    # Part of the default run; the others only when named in --servers.
    by_default: bool = True
    # Its cost is shown as a ratio to this other ligeiro target (same server, one change).
    compared_to: str | None = None
    # What a right answer names, for the error when it does not.
    expected: str = f"{EXPECTED_LABEL} (class 0)"


# --- the commands -------------------------------------------------------------------------

_ONE_WORKER: Final = ("--host", HOST, "--port", "{port}", "--workers", "1")


def uvicorn_command(module: str) -> tuple[str, ...]:
    """The baseline run as a user would: the uvicorn CLI with its defaults, one worker."""
    return (sys.executable, "-m", "uvicorn", f"benchmarks.baselines.{module}:app", *_ONE_WORKER)


def ligeiro_command(repository: Path = IRIS_REPOSITORY) -> tuple[str, ...]:
    """ligeiro's own CLI from the same virtual environment, one worker, on
    ``repository`` (iris alone unless told).

    gRPC stays on, as by default (its memory counts), on a free port: the two ligeiro
    targets run at once and would otherwise both want 8001.
    """
    return (LIGEIRO, "serve", str(repository), *_ONE_WORKER, "--grpc-port", "0")


def _raw_floor() -> tuple[str, ...]:
    """The Python floor (uvloop + httptools + orjson + ONNX Runtime, no protocol)."""
    return (sys.executable, "-m", "benchmarks.baselines.raw_floor", "--host", HOST,
            "--port", "{port}")  # fmt: skip


def targets() -> dict[str, Target]:
    """The five default iris targets (and the opt-in ones) by name, in the order they run."""
    all_targets = (
        Target("fastapi-pickle", uvicorn_command("fastapi_pickle"), "/health", "/predict",
               SEED_PAYLOAD, names_setosa, is_baseline=True, env={"IRIS_PICKLE": str(PICKLE)}),
        Target("fastapi-onnx", uvicorn_command("fastapi_onnx"), "/health", "/predict",
               SEED_PAYLOAD, names_setosa, is_baseline=True, env={"IRIS_ONNX": str(ONNX_MODEL)}),
        # What ligeiro's V2 and :predict paths are held to (issue 16: 0.7x and 0.6x).
        Target("raw-floor", _raw_floor(), "/health", "/v2/models/iris/infer",
               V2_PAYLOAD, v2_predicts_class_0, is_baseline=True,
               env={"IRIS_ONNX": str(ONNX_MODEL)}),
        Target("ligeiro-v2", ligeiro_command(), "/v2/health/ready", "/v2/models/iris/infer",
               V2_PAYLOAD, v2_predicts_class_0, is_baseline=False),
        Target("ligeiro-predict", ligeiro_command(), "/v2/health/ready",
               "/v1/models/iris:predict", SEED_PAYLOAD, names_setosa, is_baseline=False),
        # The access log on (to a file), to measure what it costs: --servers
        # ligeiro-v2,ligeiro-v2-access-log.
        Target("ligeiro-v2-access-log", ligeiro_command(), "/v2/health/ready",
               "/v2/models/iris/infer", V2_PAYLOAD, v2_predicts_class_0, is_baseline=False,
               env={"LIGEIRO_ACCESS_LOG": str(WORK_DIR / "access-log.jsonl")},
               by_default=False, compared_to="ligeiro-v2"),
    )  # fmt: skip
    return {target.name: target for target in all_targets}


# --- starting and checking ----------------------------------------------------------------


def verify(target: Target, request: HttpRequest) -> None:
    """Send the payload once and check the answer, so errors are never benchmarked.

    Raises:
        BenchmarkError: no answer, a non-200 status, or not the expected class.
    """
    # A first call may warm a model up.
    expect_answer(request, target.is_expected, expected=f"naming {target.expected}", timeout_s=30)


@dataclass(frozen=True)
class LiveServer:
    """A started, checked target and the request that loads it."""

    target: Target
    server: ServerProcess
    request: HttpRequest


def start_target(
    target: Target, round_: int, options: argparse.Namespace, stack: contextlib.ExitStack
) -> tuple[LiveServer, float]:
    """Start the target's server (stopped when ``stack`` closes) and check its answer.

    Returns:
        The live server and its start-up time in seconds.

    Raises:
        BenchmarkError: the server did not become ready, or answered wrongly.
    """
    port = free_port(HOST)
    base_url = f"http://{HOST}:{port}"
    request = HttpRequest(
        "POST", base_url + target.path, json.dumps(target.payload).encode(), JSON_HEADERS
    )
    server = stack.enter_context(
        ServerProcess(
            [argument.format(port=port) for argument in target.command],
            base_url + target.ready_path,
            log_path=WORK_DIR / "logs" / f"{target.name}-{round_}.log",
            cwd=ROOT,
            env=target.env,
        )
    )
    print(f"round {round_}: starting {target.name}: {' '.join(server.argv)}", flush=True)
    try:
        startup_s = server.start(timeout_s=options.ready_timeout)
        verify(target, request)
    except BenchmarkError:
        server.stop()  # now, not at the end of the round: it is left out of this round
        raise
    return LiveServer(target, server, request), startup_s


def start_targets(
    order: Sequence[Target],
    round_: int,
    options: argparse.Namespace,
    stack: contextlib.ExitStack,
    fail: Callable[[str, int, BenchmarkError], None],
) -> dict[str, tuple[LiveServer, float]]:
    """Start and check each target in turn (all stopped when ``stack`` closes).

    Returns:
        By name, each live server and its start-up time; a target that failed is handed
        to ``fail`` (name, round, error) and left out.
    """
    started: dict[str, tuple[LiveServer, float]] = {}
    for target in order:
        try:
            started[target.name] = start_target(target, round_, options, stack)
        except BenchmarkError as error:
            fail(target.name, round_, error)
    return started


def run_round(
    round_index: int, selected: Sequence[Target], options: argparse.Namespace, out: Rounds
) -> None:
    """One round: start every target, then load them back to back at each concurrency.

    All targets stay up for the whole round, pinned to core 0 with the others idle beside
    them: an idle server costs memory, not CPU, and keeping it up lets the targets take
    turns within seconds at each concurrency. They start one after another, so each
    start-up has the core to itself. A target that fails is stopped and skipped for the
    rest of the round; the others go on.
    """
    round_ = round_index + 1
    order = rotated(selected, round_index)
    with contextlib.ExitStack() as stack:
        started = start_targets(order, round_, options, stack, out.fail)
        live = {name: entry for name, (entry, _) in started.items()}
        out.startups += [Startup(name, round_, seconds) for name, (_, seconds) in started.items()]
        for connections in options.concurrency:
            for target in order:
                if (entry := live.get(target.name)) is None:
                    continue
                try:
                    measurement = measure(
                        entry.server,
                        entry.request,
                        connections=connections,
                        duration_s=options.duration,
                        warmup_s=options.warmup,
                    )
                except BenchmarkError as error:
                    out.fail(target.name, round_, error)
                    live.pop(target.name).server.stop()
                    continue
                out.runs.append(Run(target.name, round_, connections, measurement))
                print(
                    f"round {round_}: c={connections:<3} {target.name:<16} "
                    f"{measurement.load.requests_per_s:7.0f} req/s",
                    flush=True,
                )
