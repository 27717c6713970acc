"""The dynamic batcher against a fake clock and a hand-driven executor: deterministic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from ligeiro.errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    ServerOverloadedError,
)
from ligeiro.scheduling.batcher import Batcher, run_here
from ligeiro.scheduling.policy import BatchingPolicy


@dataclass
class _Timer:
    when: float
    callback: Callable[[], object]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeClock:
    """Time stands still until the test advances it; timers fire in order.

    It counts whole microseconds from zero, so that a timer set for ``0 + delay`` and
    the clock advanced by ``delay`` compare equal, without float drift.
    """

    now_us: int = 0
    timers: list[_Timer] = field(default_factory=list)

    def time(self) -> float:
        return self.now_us / 1e6

    def call_at(self, when: float, callback: Callable[[], object]) -> _Timer:
        timer = _Timer(when, callback)
        self.timers.append(timer)
        return timer

    def advance(self, us: int) -> None:
        self.now_us += us
        while due := sorted(
            (t for t in self.timers if not t.cancelled and t.when <= self.time()),
            key=lambda t: t.when,
        ):
            due[0].cancelled = True
            due[0].callback()


@dataclass
class FakeExecutor:
    """Holds each batch until the test finishes it: the model is 'busy' until then."""

    loop: asyncio.AbstractEventLoop
    jobs: list[tuple[Callable[[], list[np.ndarray]], asyncio.Future[list[np.ndarray]]]] = field(
        default_factory=list
    )

    def __call__(self, work: Callable[[], list[np.ndarray]]) -> asyncio.Future[list[np.ndarray]]:
        future: asyncio.Future[list[np.ndarray]] = self.loop.create_future()
        self.jobs.append((work, future))
        return future

    async def finish(self) -> None:
        """Run the oldest batch and deliver its answer."""
        work, future = self.jobs.pop(0)
        try:
            future.set_result(work())
        except Exception as exc:
            future.set_exception(exc)
        await _settle()


@dataclass
class Recorder:
    lengths: list[int] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)

    def queued(self, length: int) -> None:
        self.lengths.append(length)

    def dispatched(self, waited: Sequence[float]) -> None:
        self.waits.extend(waited)

    def executed(self, rows: int, seconds: float) -> None:
        self.runs.append(rows)


async def _settle() -> None:
    for _ in range(5):  # future callbacks go through loop.call_soon
        await asyncio.sleep(0)


def _double(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
    return [inputs["x"] * 2 for _ in outputs]


@dataclass
class Rig:
    batcher: Batcher
    clock: FakeClock
    executor: FakeExecutor
    recorder: Recorder

    def submit(self, *values: float, timeout_s: float | None = None, width: int = 1) -> Any:
        x = np.repeat(np.array(values, dtype=np.float32)[:, None], width, axis=1)
        return self.batcher.submit({"x": x}, ["y"], timeout_s)

    def batch_rows(self) -> list[int]:
        """Rows of each batch handed to the executor and not yet finished."""
        return [work.args[0]["x"].shape[0] for work, _ in self.executor.jobs]  # type: ignore[attr-defined]


def run(
    scenario: Callable[[Rig], Coroutine[Any, Any, None]],
    compute: Callable[[Mapping[str, np.ndarray], Sequence[str]], list[np.ndarray]] = _double,
    **policy: Any,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock, executor, recorder = FakeClock(), FakeExecutor(loop), Recorder()
        settings = {"max_batch_size": 8, **policy}
        batcher = Batcher(
            '"m" version 1',
            BatchingPolicy(**settings),
            compute,
            executor,
            clock=clock,
            observer=recorder,
            loop=loop,
        )
        await scenario(Rig(batcher, clock, executor, recorder))

    asyncio.run(main())


def test_an_idle_model_runs_a_request_at_once() -> None:
    async def scenario(rig: Rig) -> None:
        future = rig.submit(1.0)
        assert rig.batch_rows() == [1]  # no clock advance needed: no waiting when idle
        await rig.executor.finish()
        assert future.result()["y"].tolist() == [[2.0]]
        assert rig.recorder.waits == [0.0]

    run(scenario, max_queue_delay_us=5000)


def test_requests_gather_while_the_model_is_busy_and_split_back_exactly() -> None:
    async def scenario(rig: Rig) -> None:
        first = rig.submit(1.0)
        second, third = rig.submit(2.0, 3.0), rig.submit(4.0)
        assert rig.batch_rows() == [1]
        assert rig.batcher.queue_length == 2
        await rig.executor.finish()
        assert rig.batch_rows() == [3]  # both waiting requests, one batch
        await rig.executor.finish()
        assert first.result()["y"].tolist() == [[2.0]]
        assert second.result()["y"].tolist() == [[4.0], [6.0]]
        assert third.result()["y"].tolist() == [[8.0]]
        assert rig.recorder.runs == [1, 3]

    run(scenario)


def test_a_batch_never_exceeds_max_batch_size() -> None:
    async def scenario(rig: Rig) -> None:
        rig.submit(0.0)
        waiting = [rig.submit(float(i)) for i in range(5)]
        await rig.executor.finish()
        assert rig.batch_rows() == [4]
        await rig.executor.finish()
        assert rig.batch_rows() == [1]
        await rig.executor.finish()
        assert [f.result()["y"][0, 0] for f in waiting] == [0.0, 2.0, 4.0, 6.0, 8.0]

    run(scenario, max_batch_size=4)


def test_a_free_slot_waits_at_most_the_delay_for_a_batch_to_fill() -> None:
    async def scenario(rig: Rig) -> None:
        rig.submit(1.0)  # slot 1 busy from now on
        waiting = rig.submit(2.0)
        assert rig.batch_rows() == [1]  # slot 2 free, but one row is not worth a run yet
        rig.clock.advance(999)
        assert rig.batch_rows() == [1]
        rig.clock.advance(1)
        assert rig.batch_rows() == [1, 1]  # exactly at the delay
        assert rig.recorder.waits == [0.0, pytest.approx(0.001)]
        await rig.executor.finish()
        await rig.executor.finish()
        assert waiting.result()["y"].tolist() == [[4.0]]

    run(scenario, instances=2, max_queue_delay_us=1000)


def test_a_preferred_batch_size_runs_without_waiting_for_the_delay() -> None:
    async def scenario(rig: Rig) -> None:
        rig.submit(1.0)
        rig.submit(2.0)
        assert rig.batch_rows() == [1]
        rig.submit(3.0)
        assert rig.batch_rows() == [1, 2]

    run(scenario, instances=2, max_queue_delay_us=1_000_000, preferred_batch_sizes=[2])


def test_a_cancelled_request_leaves_the_queue() -> None:
    async def scenario(rig: Rig) -> None:
        rig.submit(1.0)
        gone = rig.submit(2.0)
        kept = rig.submit(3.0)
        gone.cancel()
        await _settle()
        assert rig.batcher.queue_length == 1
        await rig.executor.finish()
        assert rig.batch_rows() == [1]  # only the request still waiting
        await rig.executor.finish()
        assert kept.result()["y"].tolist() == [[6.0]]

    run(scenario)


def test_a_full_queue_refuses_and_recovers() -> None:
    async def scenario(rig: Rig) -> None:
        rig.submit(1.0)
        rig.submit(2.0)
        rig.submit(3.0)
        with pytest.raises(ServerOverloadedError, match="queue full \\(2 requests waiting\\)"):
            rig.submit(4.0)
        await rig.executor.finish()
        assert rig.batcher.queue_length == 0
        assert rig.submit(5.0) is not None  # room again
        assert max(rig.recorder.lengths) == 2

    run(scenario, max_queue_size=2)


def test_a_request_whose_timeout_passes_in_the_queue_fails_with_deadline_exceeded() -> None:
    async def scenario(rig: Rig) -> None:
        rig.submit(1.0)
        late = rig.submit(2.0, timeout_s=0.002)
        patient = rig.submit(3.0, timeout_s=1.0)
        rig.clock.advance(2000)
        await _settle()
        with pytest.raises(DeadlineExceededError, match="timeout of 2000 us passed"):
            late.result()
        assert rig.batcher.queue_length == 1
        await rig.executor.finish()
        await rig.executor.finish()
        assert patient.result()["y"].tolist() == [[6.0]]

    run(scenario)


def test_requests_with_different_row_shapes_run_in_separate_batches() -> None:
    async def scenario(rig: Rig) -> None:
        rig.submit(1.0)
        narrow = rig.submit(2.0)
        wide = rig.submit(3.0, width=3)
        also_narrow = rig.submit(4.0)
        await rig.executor.finish()
        assert rig.batch_rows() == [2]  # the two narrow ones, the oldest first
        await rig.executor.finish()
        assert rig.batch_rows() == [1]
        await rig.executor.finish()
        assert narrow.result()["y"].tolist() == [[4.0]]
        assert also_narrow.result()["y"].tolist() == [[8.0]]
        assert wide.result()["y"].tolist() == [[6.0, 6.0, 6.0]]

    run(scenario)


def test_requests_that_cannot_be_batched_are_refused_clearly() -> None:
    async def scenario(rig: Rig) -> None:
        with pytest.raises(InvalidInputError, match="5 rows is over max_batch_size 4"):
            rig.submit(*[1.0] * 5)
        x = np.zeros((2, 1), np.float32)
        with pytest.raises(InvalidInputError, match="'b' has 3, the first input has 2"):
            rig.batcher.submit({"x": x, "b": np.zeros((3, 1), np.float32)}, ["y"])
        assert rig.batcher.queue_length == 0

    run(scenario, max_batch_size=4)


def test_a_failed_run_fails_its_requests_and_the_next_batch_still_runs() -> None:
    calls = []

    def flaky(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        calls.append(inputs["x"].shape[0])
        if len(calls) == 2:
            raise RuntimeError("kaput")
        return _double(inputs, outputs)

    async def scenario(rig: Rig) -> None:
        rig.submit(1.0)
        failed = [rig.submit(2.0), rig.submit(3.0)]
        await rig.executor.finish()
        later = rig.submit(4.0)
        await rig.executor.finish()
        for future in failed:
            with pytest.raises(InferenceError, match='"m" version 1: kaput'):
                future.result()
        await rig.executor.finish()
        assert later.result()["y"].tolist() == [[8.0]]

    run(scenario, compute=flaky)


def test_an_output_without_a_batch_axis_is_an_inference_error() -> None:
    def summed(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        return [inputs["x"].sum(keepdims=True)[0]]

    async def scenario(rig: Rig) -> None:
        rig.submit(1.0)
        pair = [rig.submit(2.0), rig.submit(3.0)]
        await rig.executor.finish()
        await rig.executor.finish()
        for future in pair:
            with pytest.raises(InferenceError, match="shape \\[1\\] for a batch of 2 rows"):
                future.result()

    run(scenario, compute=summed)


def test_on_the_event_loop_the_requests_of_one_pass_start_as_one_batch() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        runs: list[int] = []

        def compute(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
            runs.append(inputs["x"].shape[0])
            return _double(inputs, outputs)

        batcher = Batcher(
            '"m" version 1',
            BatchingPolicy(max_batch_size=8, run_on="loop"),
            compute,
            run_here(loop),
            clock=FakeClock(),
            observer=Recorder(),
            loop=loop,
            defer=True,
        )
        x = np.ones((1, 1), np.float32)
        futures = [batcher.submit({"x": x * i}, ["y"]) for i in range(3)]
        assert runs == []  # nothing runs before the loop's pass ends
        await _settle()
        assert runs == [3]  # one run for the three requests of that pass
        assert [f.result()["y"][0, 0] for f in futures] == [0.0, 2.0, 4.0]
        later = batcher.submit({"x": x}, ["y"])
        await _settle()
        assert runs == [3, 1]
        assert later.result()["y"].tolist() == [[2.0]]

    asyncio.run(main())


def test_a_failing_run_on_the_loop_fails_its_requests() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def broken(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
            raise InferenceError("the model fell over")

        batcher = Batcher(
            '"m" version 1',
            BatchingPolicy(max_batch_size=8),
            broken,
            run_here(loop),
            clock=FakeClock(),
            observer=Recorder(),
            loop=loop,
            defer=True,
        )
        future = batcher.submit({"x": np.ones((1, 1), np.float32)}, ["y"])
        await _settle()
        with pytest.raises(InferenceError, match="the model fell over"):
            future.result()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("policy", "threads", "on_thread"),
    [
        ({}, 1, False),
        ({}, 2, True),
        ({"instances": 2}, 1, True),
        ({"run_on": "thread"}, 1, True),
        ({"run_on": "loop"}, 4, False),
    ],
)
def test_where_batches_run(policy: dict[str, Any], threads: int, on_thread: bool) -> None:
    assert BatchingPolicy(max_batch_size=4, **policy).runs_on_thread(threads) is on_thread


def test_the_loop_runs_one_batch_at_a_time() -> None:
    with pytest.raises(
        ValueError, match="run_on = 'loop' runs one batch at a time; instances is 2"
    ):
        BatchingPolicy(max_batch_size=4, run_on="loop", instances=2)


def test_on_a_thread_a_lone_request_on_an_idle_model_runs_on_the_loop() -> None:
    """No hop for one request at a time; under load, batches still go to the thread."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        executor = FakeExecutor(loop)
        inline_runs: list[int] = []
        here = run_here(loop)

        def inline(work: Callable[[], list[np.ndarray]]) -> asyncio.Future[list[np.ndarray]]:
            inline_runs.append(work.args[0]["x"].shape[0])  # type: ignore[attr-defined]
            return here(work)

        batcher = Batcher(
            '"m" version 1',
            BatchingPolicy(max_batch_size=8, run_on="thread"),
            _double,
            executor,
            clock=FakeClock(),
            observer=Recorder(),
            loop=loop,
            defer=True,
            inline=inline,
        )
        x = np.ones((1, 1), np.float32)
        alone = batcher.submit({"x": x}, ["y"])
        await _settle()
        assert inline_runs == [1]
        assert executor.jobs == []
        assert alone.result()["y"].tolist() == [[2.0]]
        # Two in one pass: a batch, on the thread; what comes meanwhile waits for it.
        pair = [batcher.submit({"x": x * i}, ["y"]) for i in (1, 2)]
        await _settle()
        assert [work.args[0]["x"].shape[0] for work, _ in executor.jobs] == [2]  # type: ignore[attr-defined]
        late = [batcher.submit({"x": x * i}, ["y"]) for i in (3, 4)]
        await _settle()
        assert batcher.queue_length == 2
        await executor.finish()
        # They waited together for the busy model: a batch on the thread, not the loop.
        assert [work.args[0]["x"].shape[0] for work, _ in executor.jobs] == [2]  # type: ignore[attr-defined]
        await executor.finish()
        assert inline_runs == [1]
        assert [f.result()["y"].tolist() for f in pair + late] == [[[2 * i]] for i in range(1, 5)]

    asyncio.run(main())


def test_a_model_whose_lone_runs_are_slow_stays_off_the_loop() -> None:
    """Past inline_max_s a lone run would hold up the loop's other work: the thread it is."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock, executor = FakeClock(), FakeExecutor(loop)

        def slow(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
            clock.now_us += 30_000  # 30 ms a run
            return _double(inputs, outputs)

        batcher = Batcher(
            '"m" version 1',
            BatchingPolicy(max_batch_size=8, run_on="thread"),
            slow,
            executor,
            clock=clock,
            observer=Recorder(),
            loop=loop,
            defer=True,
            inline=run_here(loop),
            inline_max_s=0.02,
        )
        x = np.ones((1, 1), np.float32)
        first = batcher.submit({"x": x}, ["y"])
        await _settle()
        assert first.done()  # unmeasured yet: it ran on the loop, and took 30 ms
        assert executor.jobs == []
        second = batcher.submit({"x": x}, ["y"])
        await _settle()
        assert len(executor.jobs) == 1  # now known to be slow: on the thread
        await executor.finish()
        assert second.result()["y"].tolist() == [[2.0]]

    asyncio.run(main())
