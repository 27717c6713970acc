"""The server as a process: metrics, several workers, worker restart, graceful SIGTERM."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import Server, start_server

if TYPE_CHECKING:
    from collections.abc import Callable

ROW = (
    b'{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def fresh_post(srv: Server, path: str, body: bytes) -> int:
    """POST on a new connection, so that with SO_REUSEPORT any worker may answer."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
    try:
        conn.request("POST", path, body=body)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def test_metrics_count_requests(repository: Path) -> None:
    srv = start_server(repository, "--threads", "1")
    try:
        for _ in range(7):
            assert srv.post("/v2/models/iris/infer", ROW).status == 200
        for _ in range(3):
            assert srv.post("/v2/models/iris/infer", b"{").status == 400
        srv.post("/v1/models/iris:predict", b'{"sepal_length": 1}')
        text = srv.get("/metrics").body.decode()
        assert (
            metric(text, "ligeiro_inference_requests_total", model="iris", version="1", code="200")
            == 8
        )
        assert (
            metric(text, "ligeiro_inference_requests_total", model="iris", version="1", code="400")
            == 3
        )
        assert (
            metric(text, "ligeiro_inference_duration_seconds_count", model="iris", protocol="http")
            == 11
        )
        assert metric(text, "ligeiro_inference_compute_duration_seconds_count", model="iris") == 8
        assert "process_resident_memory_bytes" in text
    finally:
        srv.stop()


def test_workers_share_the_port_and_count_exactly(repository: Path) -> None:
    srv = start_server(repository, "--workers", "2", "--threads", "1")
    try:
        workers = children(srv.process.pid)
        assert len(workers) == 2
        statuses = [fresh_post(srv, "/v2/models/iris/infer", ROW) for _ in range(60)]
        assert statuses == [200] * 60
        totals = set()
        for _ in range(4):  # whichever worker answers the scrape sees every worker's counts
            conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            conn.close()
            totals.add(metric(text, "ligeiro_inference_requests_total", model="iris", code="200"))
        assert totals == {60.0}
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize(
    ("threads", "line"),
    [
        ("1", "repository loaded once; 2 workers share it"),
        ("2", "2 runtime threads per worker: each worker loads its own copy of the models"),
    ],
)
def test_workers_with_one_thread_share_one_loaded_repository(
    repository: Path, threads: str, line: str
) -> None:
    srv = start_server(repository, "--workers", "2", "--threads", threads)
    try:
        assert line in srv.output()
        assert [fresh_post(srv, "/v2/models/iris/infer", ROW) for _ in range(10)] == [200] * 10
    finally:
        assert srv.stop() == 0


def test_model_state_in_flight_and_process_metrics_across_workers(
    repository: Path, examples: Path
) -> None:
    broken = repository / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not onnx")
    srv = start_server(repository, "--workers", "2", "--threads", "1")
    try:
        workers = children(srv.process.pid)
        assert [fresh_post(srv, "/v2/models/iris/infer", ROW) for _ in range(10)] == [200] * 10
        time.sleep(1.5)  # every worker samples its memory and CPU each second
        text = srv.get("/metrics").body.decode()
        assert metric(text, "ligeiro_model_ready", model="iris", version="1") == 1
        assert metric(text, "ligeiro_model_ready", model="broken", version="1") == 0
        assert 0 < metric(text, "ligeiro_model_load_duration_seconds", model="iris") < 60
        assert metric(text, "ligeiro_inference_in_flight", protocol="http") == 0
        rss = sum(
            int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for pid in workers
        )
        reported = metric(text, "ligeiro_process_resident_memory_bytes")
        assert 0.8 * rss < reported < 1.2 * rss  # the sum over both workers, not one
        assert metric(text, "ligeiro_process_cpu_seconds_total") > 0
    finally:
        assert srv.stop() == 0


def test_dead_worker_is_restarted(repository: Path) -> None:
    srv = start_server(repository, "--workers", "2", "--threads", "1")
    try:
        first, second = children(srv.process.pid)
        os.kill(first, signal.SIGKILL)
        wait_for(
            lambda: len(children(srv.process.pid)) == 2 and first not in children(srv.process.pid)
        )
        now = children(srv.process.pid)
        assert second in now
        assert first not in now
        assert len(now) == 2
        assert "exited with -9; restarting" in srv.output()
        assert [fresh_post(srv, "/v2/models/iris/infer", ROW) for _ in range(20)] == [200] * 20
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_finishes_the_request_in_flight(repository: Path, workers: str) -> None:
    srv = start_server(repository, "--workers", workers, "--threads", "1")
    busy = socket.create_connection((srv.host, srv.port), timeout=30)
    idle = socket.create_connection((srv.host, srv.port), timeout=30)
    try:
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        # Half a request is in flight when the signal arrives...
        busy.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
            % len(ROW)
        )
        busy.sendall(ROW[:20])
        time.sleep(0.3)  # let the server read the first half before the signal
        srv.process.send_signal(signal.SIGTERM)
        # ...the idle keep-alive connection is closed (after half a second)...
        idle.settimeout(10)
        assert idle.recv(65536) == b""
        wait_for(lambda: srv.output().count("shutting down") == int(workers))  # every worker
        # ...and the rest of the request still gets its answer, then the close.
        busy.sendall(ROW[20:])
        answer = b""
        while chunk := busy.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert b"connection: close" in answer
        assert b'"output_label"' in answer
        assert srv.process.wait(30) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((srv.host, srv.port), timeout=5)
    finally:
        busy.close()
        idle.close()
        srv.stop()
    assert re.search(r"shutting down \(pid \d+\): draining", srv.output())


@pytest.mark.parametrize("workers", ["1", "2"])
def test_no_grpc_serves_rest_only(repository: Path, workers: str) -> None:
    srv = start_server(repository, "--no-grpc", "--workers", workers, "--threads", "1")
    try:
        assert fresh_post(srv, "/v2/models/iris/infer", ROW) == 200
        assert srv.grpc_port == 0
        assert "grpc://" not in srv.output()
        if workers == "1":
            # grpcio's extension module was never loaded
            assert "cygrpc" not in Path(f"/proc/{srv.process.pid}/maps").read_text()
    finally:
        assert srv.stop() == 0
