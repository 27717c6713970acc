"""Per model version statistics, as Triton's ``GET /v2/models/{m}/stats`` reports them.

Counts and nanosecond totals in the worker that serves the call. Prometheus
(``/metrics``) carries the same quantities summed over every worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import final

import numpy as np

__all__ = ["Duration", "ModelStats"]


@dataclass(slots=True)
class Duration:
    """How many times something happened and how long it took in all (Triton's pair)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def add_ns(self, ns: int, count: int) -> None:
        """``count`` more times, ``ns`` nanoseconds more in all."""
        self.count += count
        self.ns += ns


@final
@dataclass(slots=True)
class ModelStats:
    """What one model version has done since it was loaded.

    Attributes:
        success: requests answered, and their time in the engine (queue + compute).
        fail: requests that failed in the engine (bad input found late, runtime
            errors, queue full, timeouts), and their time.
        queue: requests that waited in the batcher's queue, and for how long.
        compute_infer: runs of the model (batches), and their time.
        inference_count: rows inferred (a batch of 8 requests of 1 row counts 8).
        execution_count: runs of the model.
        last_inference_ms: wall-clock time of the last answered request, in ms.
        batches: per batch size (rows), the runs of that size and their time.
    """

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)

    def record_execution(self, rows: int, seconds: float) -> None:
        """One run of the model on ``rows`` rows."""
        self.execution_count += 1
        self.inference_count += rows
        self.compute_infer.add(seconds)
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = Duration()
        batch.add(seconds)

    def record_runs(
        self, rows: np.ndarray, compute_s: np.ndarray, request_s: np.ndarray, last_s: float
    ) -> None:
        """Unbatched requests, each one run of the model, recorded together (``rows`` and
        the seconds in the runtime and in the engine, per request; ``last_s``: the wall
        clock of the last): what ``record_execution`` and ``record_request(True, ...)``
        record one by one, to the nanosecond (``int(seconds * 1e9)`` truncates, as
        ``astype`` does)."""
        count = len(rows)
        compute_ns = (compute_s * 1e9).astype(np.int64)
        self.execution_count += count
        self.inference_count += int(rows.sum())
        self.compute_infer.add_ns(int(compute_ns.sum()), count)
        self.success.add_ns(int((request_s * 1e9).astype(np.int64).sum()), count)
        sizes, inverse = np.unique(rows, return_inverse=True)
        for i, size in enumerate(sizes.tolist()):
            batch = self.batches.get(size)
            if batch is None:
                batch = self.batches[size] = Duration()
            of_size = compute_ns if len(sizes) == 1 else compute_ns[inverse == i]
            batch.add_ns(int(of_size.sum()), len(of_size))
        self.last_inference_ms = int(last_s * 1000)

    def record_request(self, ok: bool, seconds: float) -> None:
        """One request answered by the engine, or failed there."""
        (self.success if ok else self.fail).add(seconds)
        if ok:
            self.last_inference_ms = int(time.time() * 1000)  # calendar time, as Triton
