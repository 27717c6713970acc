"""The dynamic batcher: one bounded queue per model version, run on the model's threads.

A request that finds the model idle runs at once: batching never adds latency to a
quiet server. While a batch runs, requests gather in the queue; when a run slot frees,
the requests waiting (up to ``max_batch_size`` rows, all with the same trailing shapes
and outputs) are concatenated on the batch axis, run as one, and the answer is split
back by rows. With several run slots (``instances``), a free slot takes a batch once it
reaches a preferred size or its oldest request has waited ``max_queue_delay_us``.

Everything here runs on the event loop. The model runs where ``execute`` puts it: on
the model's threads (ONNX Runtime releases the GIL, so the loop parses the next
requests meanwhile), or on the loop itself (``run_here``), which saves the hop when the
worker has no spare core. Run on the loop, dispatching waits for the end of the loop's
current pass (``defer``), so that the requests parsed in one pass start as one batch.
Time comes from an injected clock, so tests drive it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol, final

import numpy as np

from ..errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    LigeiroError,
    ServerOverloadedError,
)

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Mapping, Sequence

    from .policy import BatchingPolicy

__all__ = ["BatchObserver", "Batcher", "Clock", "Execute", "LoopClock", "Timer", "run_here"]


class Timer(Protocol):
    """A pending timer (``asyncio.TimerHandle`` or a fake)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic seconds and timers on the event loop (or a test's fake clock)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer: ...


@final
class LoopClock:
    """``time.monotonic`` with timers on the event loop.

    Not the loop's own ``time()``: uvloop's is libuv's cached, millisecond clock, too
    coarse to time a model that answers in microseconds.
    """

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    time = staticmethod(time.monotonic)

    def call_at(self, when: float, callback: Callable[[], object]) -> asyncio.Handle:
        return self._loop.call_later(max(0.0, when - time.monotonic()), callback)


class Execute(Protocol):
    """Runs ``work``; the future completes on the loop."""

    def __call__(
        self, work: Callable[[], list[np.ndarray]]
    ) -> asyncio.Future[list[np.ndarray]]: ...


def run_here(loop: asyncio.AbstractEventLoop) -> Execute:
    """An ``Execute`` that runs the work at once, on the calling (event loop) thread."""

    def execute(work: Callable[[], list[np.ndarray]]) -> asyncio.Future[list[np.ndarray]]:
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        try:
            future.set_result(work())
        except Exception as exc:  # the batcher hands it to every request of the batch
            future.set_exception(exc)
        return future

    return execute


class BatchObserver(Protocol):
    """Where the batcher reports what it does (statistics and metrics)."""

    def queued(self, length: int) -> None:
        """The queue now holds ``length`` requests."""

    def dispatched(self, waited: Sequence[float]) -> None:
        """A batch left the queue; each request had waited that many seconds."""

    def executed(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` rows ran in ``seconds``."""


@dataclass(eq=False, slots=True)
class _Request:
    inputs: Mapping[str, np.ndarray]
    outputs: tuple[str, ...]
    rows: int
    key: tuple[object, ...]
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float
    deadline: Timer | None = None
    queued: bool = True


@final
class Batcher:
    """Queues one model version's requests and runs them in batches.

    Args:
        name: the model and version, for messages (``"mlp" version 1``).
        policy: sizes, delay, queue bound and run slots.
        compute: runs the model.
        execute: runs ``compute``: on the model's threads, or here (``run_here``).
        clock: time and timers (the event loop in the server).
        observer: told about queue length, waits and runs.
        loop: where the requests' futures live.
        defer: start batches at the end of the loop's current pass rather than at once
            (for ``execute = run_here(loop)``, or with ``inline``).
        inline: where a request runs that arrives to an idle model with nothing else
            queued (``run_here(loop)``): at one request at a time the hop to ``execute``'s
            thread and back is pure cost. Only while the model's lone runs take under
            ``inline_max_s``: a longer run would hold up the loop's other work (other
            models, health checks).
        inline_max_s: see ``inline``.
    """

    def __init__(
        self,
        name: str,
        policy: BatchingPolicy,
        compute: Callable[[Mapping[str, np.ndarray], Sequence[str]], list[np.ndarray]],
        execute: Execute,
        *,
        clock: Clock,
        observer: BatchObserver,
        loop: asyncio.AbstractEventLoop,
        defer: bool = False,
        inline: Execute | None = None,
        inline_max_s: float = 0.02,
    ) -> None:
        self.name = name
        self.policy = policy
        self._compute = compute
        self._execute = execute
        self._inline = inline
        self._inline_max_s = inline_max_s
        # How long a batch of one request takes (a moving average; 0 until measured).
        self._lone_s = 0.0
        self._clock = clock
        self._observer = observer
        self._loop = loop
        self._queue: deque[_Request] = deque()
        self._running = 0
        self._timer: Timer | None = None
        self._defer = defer
        self._deferred = False
        self._delay_s = policy.max_queue_delay_us / 1e6
        self._ready_rows = (
            min(policy.preferred_batch_sizes)
            if policy.preferred_batch_sizes
            else policy.max_batch_size
        )

    @property
    def queue_length(self) -> int:
        """Requests waiting (not those running)."""
        return len(self._queue)

    def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        timeout_s: float | None = None,
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue a request; its future gets the named outputs, or the error.

        Cancelling the future takes the request out of the queue.

        Raises:
            InvalidInputError: the inputs disagree on the number of rows, or there are
                more than ``max_batch_size``.
            ServerOverloadedError: the queue is full.
        """
        rows, key = self._shape_key(inputs, outputs)
        self.admit()
        future: asyncio.Future[dict[str, np.ndarray]] = self._loop.create_future()
        now = self._clock.time()
        request = _Request(inputs, tuple(outputs), rows, key, future, now)
        if timeout_s is not None:
            request.deadline = self._clock.call_at(
                now + timeout_s, partial(self._expire, request, timeout_s)
            )
        self._queue.append(request)
        future.add_done_callback(partial(self._done, request))
        self._observer.queued(len(self._queue))
        if not self._defer:
            self._schedule()
        else:
            self._schedule_later()
        return future

    def admit(self) -> None:
        """Refuse early, before a request is even decoded, when the queue is full.

        Raises:
            ServerOverloadedError: the queue is full.
        """
        if len(self._queue) >= self.policy.max_queue_size:
            raise ServerOverloadedError(
                f"{self.name}: queue full ({self.policy.max_queue_size} requests waiting); "
                "retry later"
            )

    # -- scheduling ---------------------------------------------------------------------

    def _shape_key(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> tuple[int, tuple[object, ...]]:
        """Rows of the request, and what a batch-mate must share (outputs, row shapes)."""
        rows = -1
        key: list[object] = [tuple(outputs)]
        for name, array in inputs.items():
            if rows == -1:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise InvalidInputError(
                    f"{self.name}: every input needs the same number of rows to be batched; "
                    f"{name!r} has {array.shape[0]}, the first input has {rows}"
                )
            key.append(array.shape[1:])
        if rows > self.policy.max_batch_size:
            raise InvalidInputError(
                f"{self.name}: a request of {rows} rows is over max_batch_size "
                f"{self.policy.max_batch_size}; split it"
            )
        return rows, tuple(key)

    def _schedule(self, fresh: bool = False) -> None:
        """Start batches while there is work and a free run slot.

        ``fresh``: called for requests that just arrived (not after a run or a timer).
        """
        self._deferred = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue and self._running < self.policy.instances and not self._deferred:
            if self._running and not self._worth_running():
                oldest = self._queue[0].enqueued
                self._timer = self._clock.call_at(oldest + self._delay_s, self._schedule)
                return
            self._dispatch(self._take(), fresh)

    def _worth_running(self) -> bool:
        """With a batch already running: is the queue full enough, or waited long enough?"""
        if self._clock.time() - self._queue[0].enqueued >= self._delay_s:
            return True
        return sum(r.rows for r in self._queue) >= self._ready_rows

    def _take(self) -> list[_Request]:
        """Take the oldest request and the queued ones it can share a batch with."""
        head = self._queue[0]
        batch: list[_Request] = []
        rest: deque[_Request] = deque()
        rows = 0
        limit = self.policy.max_batch_size
        for request in self._queue:
            if request.key == head.key and rows + request.rows <= limit:
                batch.append(request)
                rows += request.rows
                request.queued = False
            else:
                rest.append(request)
        self._queue = rest
        return batch

    def _dispatch(self, batch: list[_Request], fresh: bool = False) -> None:
        now = self._clock.time()
        for request in batch:
            if request.deadline is not None:
                request.deadline.cancel()
        self._observer.queued(len(self._queue))
        self._observer.dispatched([now - r.enqueued for r in batch])
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: np.concatenate([r.inputs[name] for r in batch]) for name in batch[0].inputs
            }
        execute = self._execute
        if (
            fresh
            and self._inline is not None
            and len(batch) == 1
            and not self._running
            and not self._queue
            and self._lone_s < self._inline_max_s
        ):
            execute = self._inline
        self._running += 1
        future = execute(partial(self._compute, inputs, batch[0].outputs))
        if future.done():
            # It ran right here, on the event loop: answer now, and leave the next batch
            # to the loop's next pass, so that I/O (and new requests) come in between.
            self._complete(batch, now, future)
            self._schedule_later()
        else:
            future.add_done_callback(partial(self._finished, batch, now))

    def _schedule_later(self) -> None:
        """Schedule at the end of the loop's current pass (once, however often asked)."""
        if not self._deferred:
            self._deferred = True
            self._loop.call_soon(self._schedule, True)

    def _finished(
        self, batch: list[_Request], started: float, future: asyncio.Future[list[np.ndarray]]
    ) -> None:
        self._complete(batch, started, future)
        self._schedule()

    def _complete(
        self, batch: list[_Request], started: float, future: asyncio.Future[list[np.ndarray]]
    ) -> None:
        """Hand each request its rows of the batch's outputs, or the batch's error."""
        self._running -= 1
        rows = sum(r.rows for r in batch)
        seconds = self._clock.time() - started
        self._observer.executed(rows, seconds)
        if len(batch) == 1:
            self._lone_s = seconds if not self._lone_s else 0.8 * self._lone_s + 0.2 * seconds
        try:
            arrays = future.result()
            names = batch[0].outputs
            for name, array in zip(names, arrays, strict=True):
                if array.ndim == 0 or array.shape[0] != rows:
                    raise InferenceError(
                        f"{self.name}: output {name!r} has shape {list(array.shape)} for a "
                        f"batch of {rows} rows, so it cannot be split back into requests; "
                        "turn batching off for this model"
                    )
        except BaseException as exc:
            error = exc if isinstance(exc, LigeiroError) else InferenceError(f"{self.name}: {exc}")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
        else:
            start = 0
            for request in batch:
                end = start + request.rows
                if not request.future.done():
                    request.future.set_result(
                        {n: a[start:end] for n, a in zip(names, arrays, strict=True)}
                    )
                start = end

    # -- leaving the queue early ----------------------------------------------------------

    def _expire(self, request: _Request, timeout_s: float) -> None:
        if request.queued and not request.future.done():
            waited = self._clock.time() - request.enqueued
            request.future.set_exception(
                DeadlineExceededError(
                    f"{self.name}: the request's timeout of {timeout_s * 1e6:.0f} us passed "
                    f"while it waited in the queue ({waited * 1e6:.0f} us)"
                )
            )

    def _done(self, request: _Request, future: asyncio.Future[dict[str, np.ndarray]]) -> None:
        # Cancelled (the client went away) or expired while queued: leave the queue.
        if request.queued:
            request.queued = False
            if request.deadline is not None:
                request.deadline.cancel()
            self._queue.remove(request)
            self._observer.queued(len(self._queue))
