"""The engine: resolve a model, validate the request against it, schedule it, run it.

It knows no transport: REST, gRPC and the in-process API are thin layers over it.
``run`` computes in the caller's thread; ``submit`` is the servers' path: a model
with ``[batching]`` goes through its batcher (which runs batches on the model's own
threads or on the event loop, ``BatchingPolicy.run_on``), any other model runs at once
on the event loop (docs/adr/0004-batching.md says why).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, final

import msgspec
import numpy as np

from .errors import InvalidInputError, LigeiroError
from .repository.checks import check_inputs, decode_text
from .repository.registry import ModelState, ModelVersion, Registry, Staged
from .scheduling.batcher import Batcher, LoopClock, run_here
from .scheduling.stats import ModelStats
from .warmup import warm_up

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import TracebackType

    from .metrics import Metrics
    from .repository.config import ModelConfig
    from .scheduling.batcher import Execute
    from .scheduling.policy import BatchingPolicy

__all__ = ["Engine", "InferenceResult"]

logger = logging.getLogger(__name__)


class InferenceResult(msgspec.Struct, frozen=True):
    """A model's answer: the version that ran and its named outputs (immutable).

    A msgspec struct rather than a frozen dataclass: made in C, once a request, where
    the dataclass's ``__init__`` costs 1.9 % of an iris request's instructions (ADR 0009).
    """

    model: ModelVersion
    outputs: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]


# Unbatched runs an observer keeps before it records them (and before every read).
_RUNS_KEPT = 1024


@final
class _Observer:
    """One model version's statistics and metrics, updated by the engine and batcher.

    An unbatched request's run is kept as three numbers (rows, seconds in the runtime,
    in the engine) in a list, and the wall clock of the last, and recorded with the
    others in a few numpy calls (``flush``), at ``_RUNS_KEPT`` of them and before
    anything reads the statistics or the metrics: recording each at once was ~10 % of
    a small model's request (ADR 0009). A list, not an ``array("d")``: the array parses
    each number it is given (1 % of a request).
    With several worker processes the metrics are recorded at once (``Metrics.tallied``).
    """

    __slots__ = ("_last_run", "_metrics", "_runs", "model", "stats", "version")

    def __init__(self, model: str, version: str, metrics: Metrics | None) -> None:
        self.model = model
        self.version = version
        self.stats = ModelStats()
        self._metrics = metrics
        self._runs: list[float] | None = [] if metrics is None or metrics.tallied else None
        self._last_run = 0.0  # the wall clock of the last run kept

    def queued(self, length: int) -> None:
        if self._metrics is not None:
            self._metrics.set_queue_length(self.model, self.version, length)

    def dispatched(self, waited: Sequence[float]) -> None:
        for seconds in waited:
            self.stats.queue.add(seconds)
        if self._metrics is not None:
            self._metrics.observe_queue(self.model, self.version, waited)

    def executed(self, rows: int, seconds: float) -> None:
        self.stats.record_execution(rows, seconds)
        if self._metrics is not None:
            self._metrics.observe_compute(self.model, self.version, rows, seconds)

    def ran(self, rows: int, compute_s: float, request_s: float) -> None:
        """One request run unbatched: its one run of the model, and the request."""
        runs = self._runs
        if runs is None:
            self.executed(rows, compute_s)
            self.stats.record_request(True, request_s)
            return
        runs += (rows, compute_s, request_s)
        self._last_run = time.time()
        if len(runs) >= 3 * _RUNS_KEPT:
            self.flush()

    def flush(self) -> None:
        """Record the unbatched runs kept (``ran``)."""
        runs = self._runs
        if not runs:
            return
        table = np.array(runs, dtype=np.float64).reshape(-1, 3)
        del runs[:]
        rows, compute_s = table[:, 0].astype(np.int64), table[:, 1]
        self.stats.record_runs(rows, compute_s, table[:, 2], self._last_run)
        if self._metrics is not None:
            self._metrics.observe_computes(self.model, self.version, rows, compute_s)


@final
class _Served:
    """What the engine keeps per loaded version: its batcher (``None``: unbatched) and
    its observer, found with one lookup per request."""

    __slots__ = ("batcher", "observer")

    def __init__(self, batcher: Batcher | None, observer: _Observer) -> None:
        self.batcher = batcher
        self.observer = observer


@final
class Engine:
    """Serves the models of a repository, in process.

    Args:
        registry: the loaded models.
        metrics: where compute time is recorded, if anywhere.
        clock: monotonic seconds; injectable for tests.

    Example:
        >>> engine = Engine.from_repository("examples/models")
        >>> x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
        >>> engine.infer("iris", {"float_input": x})["output_label"]
        array([0])
    """

    def __init__(
        self,
        registry: Registry,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.registry = registry
        self._metrics = metrics
        self._clock = clock
        if metrics is not None:
            for state in registry.index():
                metrics.set_model_state(
                    state.name, state.version, state.is_ready, state.load_seconds, state.provider
                )
        self._observers: dict[tuple[str, str], _Observer] = {}
        if metrics is not None:
            metrics.before_read(self.flush)
        # Per loaded version (by identity: a reload of version 1 gets its own batcher).
        self._served: dict[ModelVersion, _Served] = {}
        self._executors: dict[ModelVersion, ThreadPoolExecutor] = {}
        self._draining: set[asyncio.Task[float]] = set()

    @classmethod
    def from_repository(
        cls,
        root: str | Path,
        *,
        threads: int = 1,
        metrics: Metrics | None = None,
        batching: Mapping[str, BatchingPolicy] | None = None,
        providers: Sequence[str] = ("cpu",),
        model_name: str | None = None,
    ) -> Engine:
        """Load every model under ``root`` (Triton's ``<model>/<version>/model.onnx``),
        or ``root`` itself as the one model ``model_name`` when that is given.

        ``batching`` replaces, per model name, the ``[batching]`` of its config.toml;
        ``providers`` are the execution providers of the models whose config.toml
        names none (``ligeiro.runtime.providers``).
        """
        registry = Registry(
            Path(root), threads=threads, batching=batching, providers=providers,
            model_name=model_name,
        )
        return cls(registry, metrics=metrics)

    @property
    def root(self) -> Path:
        """The repository's folder (error messages naming files in it are redacted)."""
        return self.registry.root

    @property
    def single_model(self) -> str | None:
        """The one model's name when the repository is that model's own folder."""
        return self.registry.model_name

    def names(self) -> list[str]:
        """The names of the models in the repository now."""
        return self.registry.names()

    def folder(self, name: str) -> Path:
        """Model ``name``'s folder in the repository (it need not exist)."""
        root = self.registry.root
        return root if self.registry.model_name is not None else root / name

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        """The version that serves ``name`` (``version``, or the default one).

        Raises:
            ModelNotFoundError: no such model or version.
            ModelNotReadyError: it failed to load.
        """
        return self.registry.get(name, version)

    def index(self) -> list[ModelState]:
        """Every model version and whether it is ready."""
        return self.registry.index()

    def versions(self, name: str) -> list[str]:
        """The ready versions of model ``name``, lowest first."""
        return [s.version for s in self.registry.index() if s.name == name and s.is_ready]

    def stats(
        self, name: str | None = None, version: str | None = None
    ) -> list[tuple[ModelState, ModelStats]]:
        """Statistics of the ready versions (of model ``name``, of ``version``) in this process.

        Raises:
            ModelNotFoundError, ModelNotReadyError: ``name`` (and ``version``) given and
                not servable.
        """
        if name is not None:
            self.model(name, version)
        self.flush()
        return [
            (state, self._observer(state.name, state.version).stats)
            for state in self.registry.index()
            if state.is_ready
            and (name is None or state.name == name)
            and (version is None or state.version == version)
        ]

    def statistics(self, model: ModelVersion) -> ModelStats:
        """The statistics of ``model`` (a version from ``model()``) in this process."""
        observer = self._observer(model.name, model.version)
        observer.flush()
        return observer.stats

    def flush(self) -> None:
        """Record what the versions' observers keep (``_Observer``): every read of the
        statistics does, and every read of the metrics (``Metrics.before_read``)."""
        for observer in self._observers.values():
            observer.flush()

    @staticmethod
    def is_batched(model: ModelVersion) -> bool:
        """Whether ``model``'s requests go through its batcher (``[batching]``)."""
        policy = model.batching
        return policy is not None and policy.max_batch_size > 0

    def run(
        self,
        model: ModelVersion,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
    ) -> InferenceResult:
        """Validate ``inputs`` against ``model`` and run it here, now (no batching).

        Raises:
            InvalidInputError: an input is unknown, missing, or of the wrong dtype or
                shape, or an output name is unknown.
            InferenceError: the runtime failed.
        """
        return self._run(model, self._observer(model.name, model.version), inputs, outputs)

    def _run(
        self,
        model: ModelVersion,
        observer: _Observer,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None,
    ) -> InferenceResult:
        clock = self._clock
        start = clock()
        try:
            names = self._validate(model, inputs, outputs)
            if model.runtime.text_inputs:
                inputs = decode_text(model, inputs)
            computing = clock()
            arrays = model.runtime.run(inputs, names)
        except LigeiroError:
            observer.stats.record_request(False, clock() - start)
            raise
        end = clock()
        rows = 1  # the first input's first dimension (a scalar input: one row)
        for first in inputs.values():
            if first.ndim:
                rows = len(first)
            break
        observer.ran(rows, end - computing, end - start)
        # One array per name asked, in order (Runtime.run's contract, which each runtime
        # checks); zip without strict=True, whose keyword costs 1 % of a small request.
        return InferenceResult(model, dict(zip(names, arrays)))

    async def submit(
        self,
        model: ModelVersion,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> InferenceResult:
        """Validate ``inputs`` and schedule ``model`` on them: the servers' path.

        A model with ``[batching]`` waits its turn in its batcher (at most
        ``timeout_s`` in the queue, when given).

        Raises:
            InvalidInputError: as ``run``, or the request cannot be batched.
            ServerOverloadedError: the model's queue is full.
            DeadlineExceededError: ``timeout_s`` passed while the request was queued.
            InferenceError: the runtime failed.
        """
        served = self._served.get(model)
        if served is None:
            served = self._serve(model)
        batcher = served.batcher
        if batcher is None:
            # Run here, now: nothing else runs on the loop meanwhile, so no drain can
            # see this request in flight (a batched one is counted, below).
            return self._run(model, served.observer, inputs, outputs)
        usage = model.usage  # a version being replaced waits for these to end (drain)
        usage.active += 1
        try:
            start = self._clock()
            stats = served.observer.stats
            try:
                names = self._validate(model, inputs, outputs)
                if model.runtime.text_inputs:
                    inputs = decode_text(model, inputs)
                arrays = await batcher.submit(inputs, names, timeout_s)
            except (LigeiroError, asyncio.CancelledError):  # cancelled: the client went away
                stats.record_request(False, self._clock() - start)
                raise
            stats.record_request(True, self._clock() - start)
            return InferenceResult(model, arrays)
        finally:
            usage.leave()

    def admit(self, model: ModelVersion) -> None:
        """Refuse a request for ``model`` before decoding it, if its queue is full.

        Raises:
            ServerOverloadedError: the model's batching queue is full.
        """
        served = self._served.get(model)
        if served is not None and served.batcher is not None:
            served.batcher.admit()

    def _validate(
        self, model: ModelVersion, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
    ) -> Sequence[str]:
        """Check the inputs; return the output names to compute."""
        check_inputs(model, inputs)
        if outputs is None:
            return model.output_names
        for name in outputs:
            if name not in model.outputs:
                raise InvalidInputError(
                    f"model {model.name!r}: unknown output {name!r}; "
                    f"it gives {', '.join(model.outputs)}"
                )
        return outputs

    def _observer(self, name: str, version: str) -> _Observer:
        observer = self._observers.get((name, version))
        if observer is None:
            observer = self._observers[name, version] = _Observer(name, version, self._metrics)
        return observer

    def _serve(self, model: ModelVersion) -> _Served:
        """The model's record, made on its first request: its batcher needs the running
        event loop."""
        policy = model.batching
        observer = self._observer(model.name, model.version)
        batcher = None
        if policy is not None and self.is_batched(model):
            loop = asyncio.get_running_loop()
            on_thread = policy.runs_on_thread(self.registry.threads)
            if on_thread:
                pool = ThreadPoolExecutor(
                    policy.instances, thread_name_prefix=f"ligeiro-{model.name}-{model.version}"
                )
                self._executors[model] = pool
                execute: Execute = partial(loop.run_in_executor, pool)
            else:
                execute = run_here(loop)
            # On the loop (and with idle_on_loop) the requests of one loop pass are
            # gathered before a batch starts; with idle_on_loop a lone one on an idle
            # model then runs right on the loop (no hop to the thread).
            batcher = Batcher(
                f"model {model.name!r} version {model.version}",
                policy,
                model.runtime.run,
                execute,
                clock=LoopClock(loop),
                observer=observer,
                loop=loop,
                defer=not on_thread or policy.idle_on_loop,
                inline=run_here(loop) if on_thread and policy.idle_on_loop else None,
            )
        served = self._served[model] = _Served(batcher, observer)
        return served

    # -- changes ------------------------------------------------------------------------

    async def prepare(
        self,
        names: Sequence[str],
        *,
        override: Mapping[str, ModelConfig] | None = None,
        unload: bool = False,
    ) -> Staged:
        """Load and warm up what changed in models ``names`` on a thread; serve nothing yet.

        See ``Registry.prepare``; the event loop keeps serving while this loads. Each
        new version runs once on its warm-up sample (``ligeiro.warmup``) first.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None,
            partial(self.registry.prepare, names, override=override, unload=unload, warm=warm_up),
        )

    def commit(self, staged: Staged) -> asyncio.Task[float]:
        """Serve ``staged`` from now on; the versions it replaces finish their requests
        (drain) and are then unloaded, in the task returned (its result: seconds).
        """
        retired = self.registry.commit(staged)
        if self._metrics is not None:
            for state in staged.states():
                self._metrics.set_model_state(
                    state.name, state.version, state.is_ready, state.load_seconds, state.provider
                )
            serving = {(s.name, s.version) for s in staged.states() if s.is_ready}
            for version in retired:
                if (version.name, version.version) not in serving:
                    self._metrics.set_model_state(version.name, version.version, False, 0.0)
        task = asyncio.get_running_loop().create_task(self._drain(retired))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)
        return task

    async def _drain(self, retired: list[ModelVersion]) -> float:
        """Wait for the requests on ``retired`` to end, then unload them."""
        started = self._clock()
        for version in retired:
            usage = version.usage
            if usage.active:
                idle = asyncio.Event()
                usage.on_idle = idle.set
                await idle.wait()
        for version in retired:
            self._served.pop(version, None)
            pool = self._executors.pop(version, None)
            if pool is not None:
                pool.shutdown(wait=False)
            version.runtime.close()
        seconds = self._clock() - started
        if retired:
            logger.info(
                "drained and unloaded %s in %.3f s",
                ", ".join(f"{v.name!r} version {v.version}" for v in retired),
                seconds,
            )
        return seconds

    def infer(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
    ) -> InferenceResult:
        """Run model ``name`` (its default version unless ``version``) on ``inputs``."""
        return self.run(self.model(name, version), inputs, outputs)

    def close(self) -> None:
        """Stop the batchers' threads (after their running batches), unload every model."""
        for pool in self._executors.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self._executors.clear()
        self._served.clear()
        self.registry.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
