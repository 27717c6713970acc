"""The tallied hot-path metrics read back exactly as prometheus-client's own would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ligeiro.metrics import Metrics

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
    metrics.request_finished("grpc")
    samples = _samples(metrics.exposition(), "ligeiro_inference_")
    assert samples["ligeiro_inference_batch_size_count", (("model", "mlp"), ("version", "2"))] == 4
    assert samples["ligeiro_inference_batch_size_sum", (("model", "mlp"), ("version", "2"))] == 5012
    key = ("ligeiro_inference_batch_size_bucket", (("le", "4.0"), ("model", "mlp"), ("version", "2")))
    assert samples[key] == 2
    assert samples["ligeiro_inference_in_flight", (("protocol", "grpc"),)] == 2
    assert samples["ligeiro_inference_compute_duration_seconds_count",
                   (("model", "mlp"), ("version", "2"))] == 4  # fmt: skip
