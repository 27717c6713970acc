"""Prometheus metrics: every name ligeiro exports is defined here.

Each ``Metrics`` owns its registry (no global state). With several worker processes
the server sets ``PROMETHEUS_MULTIPROC_DIR`` before this module is imported; values
then live in per-process memory-mapped files and ``exposition()`` sums them, so counts
are exact whichever worker serves the scrape.

In one process the per-request series (requests, latency, compute time, batch size,
in flight) are tallied in plain numbers (``_Tally``) and handed to prometheus-client in
bulk whenever the registry is read: prometheus-client takes one observation at a time,
under a lock, about 1 µs each, and a request made five of them (docs/adr/0009).
Recording is meant for one thread, the event loop's, as ``ModelStats`` is.
"""

from __future__ import annotations

import logging
import os
import resource
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, final

import numpy as np

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["CONTENT_TYPE", "Metrics"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# ``*_created`` series double the exposition and no dashboard reads them.
disable_created_metrics()

# From 50 µs: a tiny model answers in well under a millisecond.
_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _resident_bytes() -> int:
    """This process's resident memory now (``/proc/self/statm``; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except OSError:
        return 0


@final
class _Tally:
    """Observations of one histogram child (and counts of one counter child) not yet
    handed to prometheus-client: plain ints and a float, added to on the hot path.

    ``flush`` adds them to the children in bulk: the counter with ``inc(n)``, the
    histogram through its per-bucket values (``_buckets``, ``_sum``; prometheus-client
    has no public bulk observe; ``Metrics`` checks they exist, else records at once).
    """

    __slots__ = ("_bounds", "buckets", "count", "counter", "histogram", "total")

    def __init__(self, histogram: Any, counter: Any = None) -> None:
        self.histogram = histogram
        self.counter = counter
        self._bounds = histogram._upper_bounds  # ends with +Inf: every value has a bucket
        self.buckets = [0] * len(self._bounds)
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.buckets[bisect_left(self._bounds, value)] += 1  # the first bound >= value

    def add_many(self, values: np.ndarray) -> None:
        """``add`` each of ``values``: the buckets found in one numpy call."""
        self.count += len(values)
        self.total += float(values.sum())
        found = np.bincount(np.searchsorted(self._bounds, values), minlength=len(self._bounds))
        buckets = self.buckets
        for i in np.flatnonzero(found).tolist():
            buckets[i] += int(found[i])

    def flush(self) -> None:
        if not self.count:
            return
        if self.counter is not None:
            self.counter.inc(self.count)
        histogram = self.histogram
        histogram._sum.inc(self.total)
        for i, n in enumerate(self.buckets):
            if n:
                histogram._buckets[i].inc(n)
                self.buckets[i] = 0
        self.count = 0
        self.total = 0.0


def _bulk_capable(histogram: Histogram) -> bool:
    """Whether this prometheus-client's histogram children have what ``_Tally`` adds to."""
    child = histogram.labels(*("" for _ in histogram._labelnames))
    ok = all(hasattr(child, name) for name in ("_upper_bounds", "_buckets", "_sum"))
    histogram.remove(*("" for _ in histogram._labelnames))
    return ok


@final
class Metrics:
    """The server's metrics and their exposition.

    Metric names:
        ``ligeiro_inference_requests_total{model,version,protocol,code}``: requests
        answered, by the transport's status code.
        ``ligeiro_inference_duration_seconds{model,version,protocol}``: end to end,
        from a complete request to its encoded answer.
        ``ligeiro_inference_compute_duration_seconds{model,version}``: time in the
        runtime, per run (a batch is one run).
        ``ligeiro_inference_batch_size{model,version}``: rows per run; its ``_count``
        is the number of runs.
        ``ligeiro_inference_queue_duration_seconds{model,version}``: time a request
        waited in its model's batching queue.
        ``ligeiro_inference_queue_length{model,version}``: requests waiting now (summed
        over workers).
        ``ligeiro_inference_in_flight{protocol}``: inference requests received and not
        yet answered (summed over workers).
        ``ligeiro_model_ready{model,version}``: 1 when the version serves, 0 when it
        failed to load; ``ligeiro_model_load_duration_seconds{model,version}``: how
        long its load took.
        ``ligeiro_model_execution_provider{model,version,provider}``: 1 for the
        execution provider a ready ONNX version runs on (``CUDAExecutionProvider``...).
        ``ligeiro_process_resident_memory_bytes`` and
        ``ligeiro_process_cpu_seconds_total``: of every worker, summed (sampled each
        second by each worker, so exact across workers, unlike ``process_*``, which
        only a single-process server exports).
    """

    def __init__(self) -> None:
        self._multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "ligeiro_inference_requests",
            "Inference requests answered, by model, version, protocol and status code.",
            ["model", "version", "protocol", "code"],
            registry=self._registry,
        )
        self._duration = Histogram(
            "ligeiro_inference_duration_seconds",
            "End-to-end request latency: complete request received to answer encoded.",
            ["model", "version", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=self._registry,
        )
        self._compute = Histogram(
            "ligeiro_inference_compute_duration_seconds",
            "Time spent running the model in the runtime.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=self._registry,
        )
        self._batch_size = Histogram(
            "ligeiro_inference_batch_size",
            "Rows per run of the model.",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=self._registry,
        )
        self._queue = Histogram(
            "ligeiro_inference_queue_duration_seconds",
            "Time a request waited in its model's batching queue.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=self._registry,
        )
        self._queue_length = Gauge(
            "ligeiro_inference_queue_length",
            "Requests waiting in the model's batching queue.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=self._registry,
        )
        self._in_flight = Gauge(
            "ligeiro_inference_in_flight",
            "Inference requests received and not yet answered.",
            ["protocol"],
            multiprocess_mode="livesum",
            registry=self._registry,
        )
        self._model_ready = Gauge(
            "ligeiro_model_ready",
            "1 when the model version serves, 0 when it failed to load.",
            ["model", "version"],
            multiprocess_mode="max",
            registry=self._registry,
        )
        self._model_provider = Gauge(
            "ligeiro_model_execution_provider",
            "1 for the execution provider the model version runs on (ONNX models).",
            ["model", "version", "provider"],
            multiprocess_mode="max",
            registry=self._registry,
        )
        self._providers: dict[tuple[str, str], str] = {}
        self._model_load = Gauge(
            "ligeiro_model_load_duration_seconds",
            "How long loading the model version took.",
            ["model", "version"],
            multiprocess_mode="max",
            registry=self._registry,
        )
        self._rss = Gauge(
            "ligeiro_process_resident_memory_bytes",
            "Resident memory of the server's workers, summed.",
            multiprocess_mode="livesum",
            registry=self._registry,
        )
        self._cpu = Gauge(
            "ligeiro_process_cpu_seconds_total",
            "CPU time (user and system) of the server's workers, summed.",
            multiprocess_mode="livesum",
            registry=self._registry,
        )
        if self._multiprocess_dir is None:
            ProcessCollector(registry=self._registry)
        self._in_flight_children = {p: self._in_flight.labels(p) for p in ("http", "grpc")}
        # Requests received and not answered, by protocol: set into the gauge on a read.
        self._in_flight_count = dict.fromkeys(self._in_flight_children, 0)
        # Tallied (one process) or recorded at once (several: a scrape another worker
        # serves reads this one's files, which must be up to date).
        self._tallied = self._multiprocess_dir is None and _bulk_capable(self._duration)
        # labels() builds a tuple and takes a lock; the hot path looks tallies up here.
        self._request_tallies: dict[tuple[str, ...], _Tally] = {}
        self._compute_tallies: dict[tuple[str, str], tuple[_Tally, _Tally]] = {}
        self._queue_child: dict[tuple[str, str], tuple[Histogram, Gauge]] = {}
        self._sources: list[Callable[[], None]] = []  # before_read's

    @property
    def tallied(self) -> bool:
        """Whether observations may wait for a read (one process); with several worker
        processes each is recorded at once: a scrape served by another worker reads
        this one's files, which must be up to date."""
        return self._tallied

    def before_read(self, flush: Callable[[], None]) -> None:
        """Have ``flush`` called before every read: it records what its owner kept."""
        self._sources.append(flush)

    def flush(self) -> None:
        """Hand what the hot path tallied to prometheus-client (before every read)."""
        for source in self._sources:
            source()
        for tally in self._request_tallies.values():
            tally.flush()
        for tallies in self._compute_tallies.values():
            tallies[0].flush()
            tallies[1].flush()
        if self._tallied:
            for protocol, count in self._in_flight_count.items():
                self._in_flight_children[protocol].set(count)

    def observe_request(
        self, model: str, version: str, protocol: str, code: str, seconds: float
    ) -> None:
        """Count one answered request and its end-to-end latency; it is no longer in
        flight (``request_started``)."""
        key = (model, version, protocol, code)
        tally = self._request_tallies.get(key)
        if tally is None:
            tally = self._request_tallies[key] = _Tally(
                self._duration.labels(model, version, protocol),
                self._requests.labels(model, version, protocol, code),
            )
        tally.add(seconds)
        if self._tallied:
            self._in_flight_count[protocol] -= 1
        else:
            tally.flush()
            self._in_flight_children[protocol].dec()

    def observe_compute(self, model: str, version: str, rows: int, seconds: float) -> None:
        """Record one run of the model: its rows and its time in the runtime."""
        compute, batch_size = self._compute_pair(model, version)
        compute.add(seconds)
        batch_size.add(rows)
        self._settle(compute, batch_size)

    def observe_computes(
        self, model: str, version: str, rows: np.ndarray, seconds: np.ndarray
    ) -> None:
        """``observe_compute`` for each run of ``rows`` and ``seconds``, together (the
        engine's unbatched runs, kept until a read or a thousand of them)."""
        compute, batch_size = self._compute_pair(model, version)
        compute.add_many(seconds)
        batch_size.add_many(rows)
        self._settle(compute, batch_size)

    def _settle(self, *tallies: _Tally) -> None:
        """With several workers, hand what was just tallied over at once (``tallied``)."""
        if not self._tallied:
            for tally in tallies:
                tally.flush()

    def _compute_pair(self, model: str, version: str) -> tuple[_Tally, _Tally]:
        key = (model, version)
        tallies = self._compute_tallies.get(key)
        if tallies is None:
            tallies = self._compute_tallies[key] = (
                _Tally(self._compute.labels(model, version)),
                _Tally(self._batch_size.labels(model, version)),
            )
        return tallies

    def observe_queue(self, model: str, version: str, waited: Sequence[float]) -> None:
        """Record how long each request of a batch waited in the queue."""
        child = self._queue_children(model, version)[0]
        for seconds in waited:
            child.observe(seconds)

    def set_queue_length(self, model: str, version: str, length: int) -> None:
        """The number of requests now waiting in the model's queue."""
        self._queue_children(model, version)[1].set(length)

    def _queue_children(self, model: str, version: str) -> tuple[Histogram, Gauge]:
        key = (model, version)
        child = self._queue_child.get(key)
        if child is None:
            child = self._queue_child[key] = (
                self._queue.labels(model, version),
                self._queue_length.labels(model, version),
            )
        return child

    def request_started(self, protocol: str) -> None:
        """An inference request arrived (``http`` or ``grpc``)."""
        if self._tallied:
            self._in_flight_count[protocol] += 1
        else:
            self._in_flight_children[protocol].inc()

    def set_model_state(
        self, model: str, version: str, ready: bool, load_seconds: float, provider: str = ""
    ) -> None:
        """Whether a model version serves, how long it took to load, and on what."""
        self._model_ready.labels(model, version).set(1 if ready else 0)
        self._model_load.labels(model, version).set(load_seconds)
        previous = self._providers.pop((model, version), "")
        if previous and previous != provider:
            self._model_provider.labels(model, version, previous).set(0)
        if ready and provider:
            self._model_provider.labels(model, version, provider).set(1)
            self._providers[model, version] = provider

    def sample_process(self) -> None:
        """Record this process's resident memory and CPU time (call it periodically)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu.set(usage.ru_utime + usage.ru_stime)
        self._rss.set(_resident_bytes())

    def _collected(self) -> CollectorRegistry:
        """The registry to read: this process's, or every worker's files summed."""
        self.flush()
        if self._multiprocess_dir is None:
            return self._registry
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._multiprocess_dir)
        return registry

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (of every worker, when several)."""
        return generate_latest(self._collected())

    def snapshot(self) -> dict[str, Any]:
        """The numbers a dashboard shows, now (of every worker, when several).

        Returns ``{"models": {"<model>/<version>": {"requests": {code: n},
        "latency_buckets": [[le, cumulative count], ...], "queue_length": n}},
        "process": {"cpu_seconds": s, "resident_bytes": b}}``; the counts are
        cumulative, so a reader takes differences between two snapshots for rates.
        """
        models: dict[str, dict[str, Any]] = {}
        process = {"cpu_seconds": 0.0, "resident_bytes": 0.0}

        def model(labels: dict[str, str]) -> dict[str, Any]:
            key = f"{labels['model']}/{labels['version']}"
            entry = models.get(key)
            if entry is None:
                entry = models[key] = {"requests": {}, "latency_buckets": {}, "queue_length": 0}
            return entry

        for family in self._collected().collect():
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, sample.value
                if name == "ligeiro_inference_requests_total":
                    counts = model(labels)["requests"]
                    counts[labels["code"]] = counts.get(labels["code"], 0) + int(value)
                elif name == "ligeiro_inference_duration_seconds_bucket":
                    buckets = model(labels)["latency_buckets"]
                    le = labels["le"]
                    buckets[le] = buckets.get(le, 0) + int(value)
                elif name == "ligeiro_inference_queue_length":
                    model(labels)["queue_length"] += int(value)
                elif name == "ligeiro_process_cpu_seconds_total":
                    process["cpu_seconds"] += value
                elif name == "ligeiro_process_resident_memory_bytes":
                    process["resident_bytes"] += value
        for entry in models.values():
            # Summed over protocols, by upper bound; +Inf (JSON has no infinity) is null, last.
            entry["latency_buckets"] = [
                [None if bound == float("inf") else bound, n]
                for bound, n in sorted((float(le), n) for le, n in entry["latency_buckets"].items())
            ]
        return {"models": models, "process": process}
