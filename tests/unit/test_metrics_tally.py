"""The tallied hot-path metrics read back exactly as prometheus-client's own would."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ligeiro.engine import Engine
from ligeiro.metrics import Metrics
from ligeiro.scheduling.stats import ModelStats
from tests.models import write

_LATENCY = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def _samples(text: bytes, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name.startswith(prefix)
    }


def test_requests_and_latency_match_prometheus_client_observing_one_at_a_time() -> None:
    rng = random.Random(7)
    metrics = Metrics()
    registry = CollectorRegistry()
    counter = Counter("ligeiro_inference_requests", "", ["model", "version", "protocol", "code"],
                      registry=registry)  # fmt: skip
    histogram = Histogram("ligeiro_inference_duration_seconds", "",
                          ["model", "version", "protocol"], buckets=_LATENCY, registry=registry)  # fmt: skip
    # Values on the bucket bounds too: le is inclusive in both.
    values = [rng.choice((rng.uniform(0, 0.02), rng.choice(_LATENCY), 20.0)) for _ in range(500)]
    for i, seconds in enumerate(values):
        code = "200" if i % 7 else "400"
        metrics.observe_request("iris", "1", "http", code, seconds)
        counter.labels("iris", "1", "http", code).inc()
        histogram.labels("iris", "1", "http").observe(seconds)
        if i == 250:  # a read in between flushes; the rest still adds up
            metrics.exposition()
    ours = _samples(metrics.exposition(), "ligeiro_inference_")
    theirs = _samples(generate_latest(registry), "ligeiro_inference_")
    assert theirs
    for key, value in theirs.items():
        assert ours[key] == value if not key[0].endswith("_sum") else abs(ours[key] - value) < 1e-9


def test_compute_batch_size_and_in_flight_read_back() -> None:
    metrics = Metrics()
    for rows in (1, 3, 8, 5000):
        metrics.observe_compute("mlp", "2", rows, 0.001)
    for _ in range(3):
        metrics.request_started("grpc")
    metrics.observe_request("mlp", "2", "grpc", "OK", 0.001)  # one of them answered
    samples = _samples(metrics.exposition(), "ligeiro_inference_")
    assert samples["ligeiro_inference_batch_size_count", (("model", "mlp"), ("version", "2"))] == 4
    assert samples["ligeiro_inference_batch_size_sum", (("model", "mlp"), ("version", "2"))] == 5012
    key = ("ligeiro_inference_batch_size_bucket", (("le", "4.0"), ("model", "mlp"), ("version", "2")))
    assert samples[key] == 2
    assert samples["ligeiro_inference_in_flight", (("protocol", "grpc"),)] == 2
    assert samples["ligeiro_inference_compute_duration_seconds_count",
                   (("model", "mlp"), ("version", "2"))] == 4  # fmt: skip


def test_compute_observed_together_matches_prometheus_client_one_at_a_time() -> None:
    """``observe_computes`` (the engine's kept runs, in numpy) reads back as
    prometheus-client observing each run, values on the bucket bounds too."""
    rng = random.Random(11)
    metrics = Metrics()
    registry = CollectorRegistry()
    compute = Histogram("ligeiro_inference_compute_duration_seconds", "", ["model", "version"],
                        buckets=_LATENCY, registry=registry)  # fmt: skip
    seconds = [rng.choice((rng.uniform(0, 0.02), rng.choice(_LATENCY), 20.0)) for _ in range(300)]
    for value in seconds:
        compute.labels("mlp", "2").observe(value)
    metrics.observe_computes("mlp", "2", np.ones(200, np.int64), np.array(seconds[:200]))
    metrics.exposition()  # a read in between
    metrics.observe_computes("mlp", "2", np.ones(100, np.int64), np.array(seconds[200:]))
    prefix = "ligeiro_inference_compute_duration_seconds"
    ours, theirs = _samples(metrics.exposition(), prefix), _samples(generate_latest(registry), prefix)
    assert theirs
    for key, value in theirs.items():
        assert ours[key] == value if not key[0].endswith("_sum") else abs(ours[key] - value) < 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.floats(0, 2), st.floats(0, 3)), min_size=1))
def test_runs_recorded_together_are_the_runs_recorded_one_by_one(
    runs: list[tuple[int, float, float]],
) -> None:
    """``ModelStats.record_runs`` (numpy, over the runs an observer kept) counts what
    ``record_execution`` and ``record_request`` count, to the nanosecond."""
    one_by_one, together = ModelStats(), ModelStats()
    for rows, compute_s, request_s in runs:
        one_by_one.record_execution(rows, compute_s)
        one_by_one.record_request(True, request_s)
    table = np.array(runs, dtype=np.float64)
    together.record_runs(table[:, 0].astype(np.int64), table[:, 1], table[:, 2], 1e9)
    assert together.last_inference_ms == 10**12
    together.last_inference_ms = one_by_one.last_inference_ms
    assert together == one_by_one


def test_an_engines_kept_runs_are_recorded_before_every_read(tmp_path: Path) -> None:
    """Unbatched requests on the engine: its statistics and the metrics read back each
    run, whether read after a few (kept runs, recorded by the read) or after more than
    an observer keeps (recorded on the way)."""
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "m", [x_info], [y_info])
    write(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
          tmp_path, "m")  # fmt: skip
    metrics = Metrics()
    with Engine.from_repository(tmp_path, metrics=metrics) as engine:
        model = engine.model("m")
        x = {"x": np.zeros((2, 3), np.float32)}
        prefix = "ligeiro_inference_batch_size"
        key = (f"{prefix}_sum", (("model", "m"), ("version", "1")))
        done = 0
        for total in (3, 2000):  # 1,997 more runs: more than an observer keeps
            for _ in range(total - done):
                engine.run(model, x)
            done = total
            stats = engine.statistics(model)
            assert (stats.execution_count, stats.inference_count) == (total, 2 * total)
            assert stats.success.count == stats.compute_infer.count == total
            assert stats.batches[2].count == total and stats.last_inference_ms > 0
            assert _samples(metrics.exposition(), prefix)[key] == 2 * total
