"""Runs the levels of ``ligeiro bench`` and turns each run's events into a ``Level``."""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TYPE_CHECKING, Literal

from ._grpcloop import GRPC_STATUS, run_grpc_closed_loop, run_grpc_open_loop, status_name
from ._openloop import (
    HUNG,
    NOT_SENT,
    TRANSPORT_ERROR,
    ClosedLoop,
    Event,
    OpenLoop,
    OpenLoopResult,
    percentile,
    run_closed_loop,
    run_open_loop,
)
from ._plan import Stage, stage_schedule
from ._server import ServerSample, scrape

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..client import Client

logger = logging.getLogger(__name__)

__all__ = ["BenchPlan", "Level", "run_bench"]

_OUTCOMES = {TRANSPORT_ERROR: "connection", HUNG: "timeout", NOT_SENT: "not_sent"}
# One process past this share of a core cannot be trusted to drive the target.
CLIENT_BUSY: float = 0.9


@dataclass(frozen=True)
class BenchPlan:
    """Where to send what, and which levels to run (exactly one of the three).

    ``request`` is a raw HTTP/1.1 request (``http_request``), or for ``protocol="grpc"``
    a serialized ``ModelInferRequest`` (``infer_request_bytes``). ``requests``, when
    given, replaces it with several sent in turn (a rendered ``--template``).
    ``window_s`` > 0 also cuts a ``stages`` run into windows of that length: levels
    with mode ``"window"``, after the stages (k6's time series).
    """

    host: str
    port: int
    request: bytes
    concurrency: Sequence[int] = ()
    rates_per_s: Sequence[float] = ()
    stages: Sequence[Stage] = ()
    duration_s: float = 10.0
    warmup_s: float = 0.0
    timeout_s: float = 10.0
    connections: int = 512
    processes: int = 1
    protocol: Literal["http", "grpc"] = "http"
    requests: Sequence[bytes] = ()
    window_s: float = 0.0


Mode = Literal["concurrency", "rate", "stage", "window"]


@dataclass
class Level:
    """One load level's numbers. Latencies (ms) are of 2xx (gRPC: OK) answers only."""

    label: str
    mode: Mode
    target: float  # connections, or requests/s (a window: the rate scheduled in it)
    duration_s: float
    sent: int = 0
    ok: int = 0
    # HTTP status, gRPC code name (NOT_FOUND) or outcome (timeout, not_sent) -> count
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 p90 p95 p99 max mean
    throughput_per_s: float = 0.0  # 2xx answers per second
    server_cpu_cores: float | None = None
    server_rss_bytes: float | None = None
    client_cpu: float = 0.0  # the busiest generator process, in cores

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def is_client_bound(self) -> bool:
        return self.client_cpu > CLIENT_BUSY


def _level(
    label: str,
    mode: Mode,
    target: float,
    duration_s: float,
    events: Sequence[Event],
    client_cpu: float,
) -> Level:
    level = Level(label, mode, target, duration_s, client_cpu=client_cpu)
    latencies = []
    for _, status, latency_ms in events:
        if 200 <= status < 300 or status == GRPC_STATUS:
            latencies.append(latency_ms)
        else:
            key = _OUTCOMES.get(status) or _grpc_name(status) or str(status)
            level.errors[key] = level.errors.get(key, 0) + 1
    level.ok = len(latencies)
    level.sent = len(events) - level.errors.get("not_sent", 0)
    level.throughput_per_s = level.ok / duration_s if duration_s else 0.0
    if latencies:
        latencies.sort()
        level.latency_ms = {f"p{q}": percentile(latencies, q / 100) for q in (50, 90, 95, 99)} | {
            "max": latencies[-1],
            "mean": sum(latencies) / len(latencies),
        }
    return level


def _grpc_name(status: int) -> str | None:
    return status_name(status) if status > GRPC_STATUS else None


def _server(level: Level, before: ServerSample | None, after: ServerSample | None) -> None:
    if before is not None and after is not None and after.at_s > before.at_s:
        level.server_cpu_cores = (after.cpu_s - before.cpu_s) / (after.at_s - before.at_s)
        level.server_rss_bytes = after.rss_bytes


def _closed(config: ClosedLoop) -> OpenLoopResult:
    return run_closed_loop(config)


def _open(config: OpenLoop) -> OpenLoopResult:
    return run_open_loop(config)


def _grpc_closed(config: ClosedLoop) -> OpenLoopResult:
    return run_grpc_closed_loop(config)


def _grpc_open(config: OpenLoop) -> OpenLoopResult:
    return run_grpc_open_loop(config)


class _Driver:
    """Runs one load on this process, or split over ``processes`` and merged."""

    def __init__(self, processes: int, protocol: Literal["http", "grpc"] = "http") -> None:
        self.processes = processes
        # Module-level functions, so that a spawned process can unpickle them.
        self.run_closed, self.run_open = (
            (_grpc_closed, _grpc_open) if protocol == "grpc" else (_closed, _open)
        )
        self.pool = (
            ProcessPoolExecutor(processes, mp_context=get_context("spawn"))
            if processes > 1
            else None
        )

    def closed(self, config: ClosedLoop) -> tuple[list[Event], float]:
        if self.pool is None:
            return _one(self.run_closed(config))
        shares = _split(config.concurrency, self.processes)
        configs = [_replace_closed(config, n) for n in shares if n]
        return _merge(list(self.pool.map(self.run_closed, configs)))

    def open(self, config: OpenLoop) -> tuple[list[Event], float]:
        if self.pool is None:
            return _one(self.run_open(config))
        n = self.processes
        offsets = config.schedule_s
        if offsets is None:
            step = 1.0 / config.rate_per_s
            offsets = [i * step for i in range(int(config.duration_s * config.rate_per_s))]
        configs = [
            OpenLoop(
                config.host,
                config.port,
                config.requests,
                config.rate_per_s / n,
                config.duration_s,
                max(1, config.connections // n),
                config.timeout_s,
                offsets[i::n],
            )
            for i in range(n)
        ]
        return _merge(list(self.pool.map(self.run_open, configs)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _replace_closed(config: ClosedLoop, concurrency: int) -> ClosedLoop:
    return ClosedLoop(
        config.host, config.port, config.requests, concurrency, config.duration_s,
        config.timeout_s,
    )  # fmt: skip


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _one(result: OpenLoopResult) -> tuple[list[Event], float]:
    return result.events, result.client_cpu_s / result.duration_s if result.duration_s else 0.0


def _merge(results: list[OpenLoopResult]) -> tuple[list[Event], float]:
    events = [event for result in results for event in result.events]
    return events, max(_one(result)[1] for result in results)


def run_bench(
    plan: BenchPlan,
    metrics: Client | None = None,
    metrics_path: str = "/metrics",
    progress: Callable[[Level], None] | None = None,
) -> list[Level]:
    """Run every level of ``plan``; scrape ``metrics`` (when given) around each.

    Returns:
        One ``Level`` per concurrency, rate or stage, in order.
    """

    def sample() -> ServerSample | None:
        return scrape(metrics, metrics_path) if metrics is not None else None

    requests = list(plan.requests) or [plan.request]
    driver = _Driver(plan.processes, plan.protocol)
    levels: list[Level] = []
    try:
        for concurrency in plan.concurrency:
            config = ClosedLoop(
                plan.host, plan.port, requests, concurrency, plan.duration_s, plan.timeout_s
            )
            if plan.warmup_s > 0:
                driver.closed(_with_duration(config, plan.warmup_s))
            before = sample()
            events, cpu = driver.closed(config)
            level = _level(
                f"c={concurrency}", "concurrency", concurrency, plan.duration_s, events, cpu
            )
            _server(level, before, sample())
            levels.append(level)
            if progress is not None:
                progress(level)
        for rate in plan.rates_per_s:
            open_config = OpenLoop(
                plan.host, plan.port, requests, rate, plan.duration_s,
                plan.connections, plan.timeout_s,
            )  # fmt: skip
            if plan.warmup_s > 0:
                driver.open(_with_open_duration(open_config, plan.warmup_s))
            before = sample()
            events, cpu = driver.open(open_config)
            level = _level(f"{rate:g}/s", "rate", rate, plan.duration_s, events, cpu)
            _server(level, before, sample())
            levels.append(level)
            if progress is not None:
                progress(level)
        if plan.stages:
            levels += _run_stages(plan, driver, requests, sample, progress)
    finally:
        driver.close()
    return levels


def _with_duration(config: ClosedLoop, duration_s: float) -> ClosedLoop:
    return ClosedLoop(
        config.host, config.port, config.requests, config.concurrency, duration_s,
        config.timeout_s,
    )  # fmt: skip


def _with_open_duration(config: OpenLoop, duration_s: float) -> OpenLoop:
    return OpenLoop(
        config.host, config.port, config.requests, config.rate_per_s, duration_s,
        config.connections, config.timeout_s,
    )  # fmt: skip


def _run_stages(
    plan: BenchPlan,
    driver: _Driver,
    requests: list[bytes],
    sample: Callable[[], ServerSample | None],
    progress: Callable[[Level], None] | None,
) -> list[Level]:
    """One continuous open-loop run, cut into its stages by scheduled time."""
    offsets, ends = stage_schedule(list(plan.stages))
    if plan.warmup_s > 0:
        driver.closed(ClosedLoop(plan.host, plan.port, requests, 1, plan.warmup_s))
    # The server is sampled at each stage's end from a thread, while the load runs.
    samples: list[ServerSample | None] = [sample()]
    start = time.monotonic() + 0.05  # the generator's own settling moment
    stop = threading.Event()

    def sampler() -> None:
        for end in ends:
            if stop.wait(max(0.0, start + end - time.monotonic())):
                return
            samples.append(sample())

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    config = OpenLoop(
        plan.host, plan.port, requests, 1.0, ends[-1], plan.connections, plan.timeout_s,
        offsets,
    )  # fmt: skip
    try:
        events, cpu = driver.open(config)
    finally:
        stop.set()
        thread.join()
    # Arrival k falls where the rate's integral reaches k: a boundary belongs to the stage
    # it ends (bisect_left), and the last arrival lies exactly at the last end.
    by_stage: list[list[Event]] = [[] for _ in ends]
    for event in events:
        by_stage[min(len(ends) - 1, bisect.bisect_left(ends, event[0] - 1e-9))].append(event)
    levels = []
    for index, (stage, in_stage) in enumerate(zip(plan.stages, by_stage, strict=True)):
        if stage.duration_s <= 0:
            continue
        level = _level(
            f"{index + 1}: →{stage.target_per_s:g}/s", "stage", stage.target_per_s,
            stage.duration_s, in_stage, cpu,
        )  # fmt: skip
        if index + 1 < len(samples):
            _server(level, samples[index], samples[index + 1])
        levels.append(level)
        if progress is not None:
            progress(level)
    if plan.window_s > 0:
        levels += _windows(events, offsets, ends[-1], plan.window_s, cpu)
    return levels


def _windows(
    events: Sequence[Event], offsets: Sequence[float], end_s: float, window_s: float, cpu: float
) -> list[Level]:
    """The run cut into windows of ``window_s`` by scheduled time (the last may be shorter)."""
    count = max(1, math.ceil(end_s / window_s - 1e-6))  # no sliver from rounding

    def index(offset: float) -> int:  # as for stages: a boundary belongs to the window it ends
        return min(count - 1, max(0, math.ceil(offset / window_s - 1e-9) - 1))

    by_window: list[list[Event]] = [[] for _ in range(count)]
    for event in events:
        by_window[index(event[0])].append(event)
    scheduled = [0] * count
    for offset in offsets:
        scheduled[index(offset)] += 1
    windows = []
    for number, in_window in enumerate(by_window):
        begin = number * window_s
        length = min(window_s, end_s - begin)
        windows.append(
            _level(f"{begin:g}s", "window", scheduled[number] / length, length, in_window, cpu)
        )
    return windows
