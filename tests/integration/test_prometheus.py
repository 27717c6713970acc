"""A real Prometheus (Debian's, unpacked by `make test`) scrapes a two-worker ligeiro
loaded by `ligeiro bench`; request counts and p95 latency read back through PromQL agree
with what the server really did (its access log holds every request's latency) and with
what the load generator measured."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ligeiro.bench import BenchPlan, http_request, run_bench
from ligeiro.client import AsyncClient
from tests.conftest import IRIS_REQUEST, ROOT, Server, debian_tool, start_server

PROMETHEUS = ROOT / ".venv" / "prometheus" / "usr" / "bin" / "prometheus"
# The server's latency histogram buckets (src/ligeiro/metrics.py), in seconds.
BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf,
)  # fmt: skip
REQUESTS = 600


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as exc:  # a query this Prometheus cannot run: say which
        pytest.fail(f"{debian_tool(PROMETHEUS, 'prometheus')} refuses {promql!r}: "
                    f"{exc.read()[:2000]!r}")
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(port: int, promql: str) -> float:
    result = query(port, promql)
    assert len(result) == 1, (promql, result)
    return float(result[0]["value"][1])


@pytest.fixture
def ligeiro(repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("LIGEIRO_ACCESS_LOG", str(tmp_path / "access.jsonl"))
    srv = start_server(repository, "--workers", "2", "--threads", "1")
    yield srv
    srv.stop()


@pytest.fixture
def prometheus(ligeiro: Server, tmp_path: Path) -> Iterator[int]:
    debian_tool(PROMETHEUS, "prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: ligeiro\n"
        f"    static_configs:\n      - targets: ['{ligeiro.host}:{ligeiro.port}']\n"
    )
    command = [
        str(PROMETHEUS), f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("prometheus did not become ready in 30 s")
        yield port
    finally:
        process.terminate()
        process.wait(30)


def load(srv: Server, requests: int = REQUESTS) -> None:
    """``requests`` iris requests from 8 concurrent connections (a multiple of 8)."""
    x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)

    async def connection(count: int) -> None:
        async with AsyncClient(f"http://{srv.host}:{srv.port}") as client:
            for _ in range(count):
                await client.infer("iris", {"float_input": x})

    async def everything() -> None:
        await asyncio.gather(*(connection(requests // 8) for _ in range(8)))

    asyncio.run(everything())


def bucket_of(seconds: float) -> tuple[float, float]:
    lower = 0.0
    for upper in BUCKETS:
        if seconds <= upper:
            return lower, upper
        lower = upper
    raise AssertionError("unreachable")


def test_prometheus_reads_back_request_counts_and_p95(
    ligeiro: Server, prometheus: int, tmp_path: Path
) -> None:
    total = 'sum(ligeiro_inference_requests_total{model="iris",code="200"})'
    load(ligeiro, 8)  # the series exists, and is scraped before the load...
    wait_for(prometheus, total, 8)
    # ...so that the load, from `ligeiro bench`, shows as a rate.
    body = json.dumps(IRIS_REQUEST).encode()
    request = http_request(f"http://{ligeiro.host}:{ligeiro.port}/v2/models/iris/infer", body)
    # An open loop at a modest rate: no request waits in the generator, so what it
    # measures is the server's time plus its own per-request overhead.
    (level,) = run_bench(BenchPlan(ligeiro.host, ligeiro.port, request, rates_per_s=[300],
                                   duration_s=3.0))  # fmt: skip
    assert level.error_count == 0
    sent = level.ok
    wait_for(prometheus, total, 8 + sent)  # exact, whichever worker was scraped
    assert scalar(prometheus, f"sum(rate({total[4:-1]}[1m]))") > 0

    p95 = scalar(
        prometheus,
        "histogram_quantile(0.95, sum by (le) "
        '(ligeiro_inference_duration_seconds_bucket{model="iris"}))',
    )
    # Read while the target is up: once it stops, the next failed scrape marks its series stale.
    assert len(query(prometheus, "ligeiro_process_resident_memory_bytes")) == 1
    ligeiro.stop()  # flushes the access log
    latencies = sorted(
        json.loads(line)["latency_ms"] / 1e3
        for line in (tmp_path / "access.jsonl").read_text().splitlines()
    )
    assert len(latencies) == 8 + sent
    exact = latencies[math.ceil(0.95 * len(latencies)) - 1]
    # Within the histogram's bucket error: PromQL interpolates inside the bucket that
    # holds the 95th percentile, so it lies in the same bucket as the exact value...
    assert bucket_of(p95) == bucket_of(exact), (p95, exact)
    # ...and within the bucket error of what `ligeiro bench` measured, once the
    # generator's own time per request (its median excess over the server's) is allowed.
    client = level.latency_ms["p95"] / 1e3
    overhead = max(0.0, level.latency_ms["p50"] / 1e3 - latencies[len(latencies) // 2])
    lower, upper = bucket_of(client)
    assert abs(p95 - client) <= (upper - lower) + overhead, (p95, client, overhead)


def test_every_dashboard_panel_has_data(ligeiro: Server, prometheus: int) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "ligeiro-dashboard.json").read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert titles == ["p95 latency", "Requests per minute", "Memory (all workers)",
                      "CPU (all workers)"]  # fmt: skip
    load(ligeiro, 8)
    wait_for(prometheus, 'sum(ligeiro_inference_requests_total{code="200"})', 8)
    load(ligeiro)
    wait_for(prometheus, 'sum(ligeiro_inference_requests_total{code="200"})', 8 + REQUESTS)
    for panel in dashboard["panels"]:
        (target,) = panel["targets"]
        result = query(prometheus, target["expr"])
        assert result, f"panel {panel['title']!r}: {target['expr']} has no data"
        assert all(math.isfinite(float(r["value"][1])) for r in result), (panel["title"], result)


def wait_for(port: int, promql: str, value: float, timeout: float = 30) -> None:
    """Until ``promql`` reads ``value`` (scrapes come every second), then one more scrape."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(port, promql)
        if result and float(result[0]["value"][1]) == value:
            time.sleep(1.5)
            return
        assert time.monotonic() < deadline, (promql, result, value)
        time.sleep(0.25)
