"""Tracing on real sockets: a server span per inference request with its stages, the
W3C trace context taken from HTTP headers and gRPC metadata, and nothing when off.

The spans are exported inside the server process (tests/tracing_support.py writes
them as JSON lines); the test reads them back once the server has stopped, which
flushes the exporter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from ligeiro.protocol.grpc_codec import pb
from tests.conftest import IRIS_REQUEST, ROOT, start_server

pytest.importorskip("opentelemetry.sdk")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
STAGES = ["decode", "queue", "compute", "encode"]


def spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def grpc_infer(target: str, model: str, metadata: list[tuple[str, str]]) -> None:
    request = pb.ModelInferRequest(
        model_name=model,
        id="g-1",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="float_input",
                datatype="FP32",
                shape=[1, 4],
                contents=pb.InferTensorContents(fp32_contents=[5.1, 3.5, 1.4, 0.2]),
            )
        ],
    )
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        call(request, metadata=metadata, timeout=30)


@pytest.fixture
def traced(repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tracing on through the tests' exporter; iris unbatched and ``batched`` batched."""
    shutil.copytree(repository / "iris", repository / "batched")
    span_file = tmp_path / "spans.jsonl"
    # The exporter is found as a user's would be: OTEL_TRACES_EXPORTER names an entry
    # point of the opentelemetry_traces_exporter group, here from a dist-info folder.
    from tests.tracing_support import TEST_EXPORTER, install_test_exporter

    plugins = install_test_exporter(tmp_path / "plugins")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", TEST_EXPORTER)
    monkeypatch.setenv("_LIGEIRO_SPAN_FILE", str(span_file))
    monkeypatch.setenv("LIGEIRO_BATCHING__BATCHED__MAX_BATCH_SIZE", "8")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(ROOT), str(plugins)])
    )
    return span_file


def by_trace(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    traces: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        traces.setdefault(record["trace_id"], []).append(record)
    return traces


def check_request(records: list[dict[str, Any]], stages: list[str]) -> dict[str, Any]:
    """The one server span and its stage children, in order and inside it; returns it."""
    (root,) = [r for r in records if r["name"] == "ligeiro.infer"]
    children = sorted((r for r in records if r is not root), key=lambda r: r["start"])
    assert [c["name"] for c in children] == stages
    for child in children:
        assert child["parent_id"] == root["span_id"]
        assert root["start"] <= child["start"] <= child["end"] <= root["end"]
    assert root["kind"] == "SERVER"
    assert root["service"] == "ligeiro"
    return root


def test_http_and_grpc_requests_are_traced_under_their_traceparent(
    repository: Path, traced: Path
) -> None:
    srv = start_server(repository, "--threads", "1")
    try:
        headers = {"content-type": "application/json", "traceparent": TRACEPARENT}
        body = json.dumps({**IRIS_REQUEST, "id": "r-1"})
        assert srv.request("POST", "/v2/models/batched/infer", body, headers).status == 200
        assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).status == 200
        grpc_id = "0af7651916cd43dd8448eb211c80319c"
        grpc_infer(
            srv.grpc_target, "batched", [("traceparent", f"00-{grpc_id}-b7ad6b7169203331-01")]
        )
        assert srv.request("POST", "/v2/models/roses/infer", body, headers).status == 404
        assert srv.get("/v2/health/ready").status == 200  # not an inference: no span
    finally:
        assert srv.stop() == 0
    traces = by_trace(spans(traced))
    assert len(traces) == 3  # header trace (two requests), a new one, the gRPC one

    _, missing = sorted(
        (r for r in traces.pop(TRACE_ID) if r["name"] == "ligeiro.infer"),
        key=lambda r: r["start"],
    )
    http_records = [r for r in spans(traced) if r["trace_id"] == TRACE_ID]
    http_records = [r for r in http_records if r["span_id"] != missing["span_id"]]
    root = check_request(http_records, STAGES)
    assert root["parent_id"] == PARENT_ID
    assert root["attributes"] == {
        "ligeiro.protocol": "http",
        "ligeiro.model": "batched",
        "ligeiro.version": "1",
        "ligeiro.status": "200",
        "ligeiro.request_id": "r-1",
    }
    assert root["status"] == "UNSET"
    compute = next(r for r in http_records if r["name"] == "compute")
    assert compute["attributes"]["ligeiro.batch.runs"] == 1  # its own batch, alone
    assert missing["parent_id"] == PARENT_ID
    assert missing["attributes"]["ligeiro.status"] == "404"
    assert missing["status"] == "ERROR"

    grpc_records = traces.pop(grpc_id)
    root = check_request(grpc_records, STAGES)
    assert root["parent_id"] == "b7ad6b7169203331"
    assert root["attributes"]["ligeiro.protocol"] == "grpc"
    assert root["attributes"]["ligeiro.status"] == "OK"
    assert root["attributes"]["ligeiro.request_id"] == "g-1"

    ((_, fresh),) = traces.items()  # no traceparent: a trace of its own, no parent
    root = check_request(fresh, ["decode", "compute", "encode"])  # not batched: no queue
    assert root["parent_id"] is None
    assert root["attributes"]["ligeiro.model"] == "iris"


def test_predict_is_traced_and_service_name_follows_otel_service_name(
    repository: Path, traced: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "iris-api")
    srv = start_server(repository, "--threads", "1", "--workers", "2")
    try:
        body = json.dumps(
            {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
        )
        for _ in range(4):
            headers = {"content-type": "application/json", "traceparent": TRACEPARENT}
            assert srv.request("POST", "/v1/models/iris:predict", body, headers).status == 200
    finally:
        assert srv.stop() == 0
    records = spans(traced)
    roots = [r for r in records if r["name"] == "ligeiro.infer"]
    assert len(roots) == 4
    assert {r["service"] for r in records} == {"iris-api"}
    assert {r["trace_id"] for r in records} == {TRACE_ID}
    assert len(records) == 4 * 4  # each: decode, compute, encode


def test_tracing_off_exports_nothing_and_never_imports_opentelemetry(
    repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    span_file = tmp_path / "spans.jsonl"
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("_LIGEIRO_SPAN_FILE", str(span_file))  # but no exporter named
    srv = start_server(repository, "--threads", "1")
    try:
        headers = {"content-type": "application/json", "traceparent": TRACEPARENT}
        assert (
            srv.request("POST", "/v2/models/iris/infer", json.dumps(IRIS_REQUEST), headers).status
            == 200
        )
    finally:
        assert srv.stop() == 0
    assert not span_file.exists()
    # What a worker imports to serve, over both transports: no opentelemetry among it.
    code = (
        "import sys, ligeiro.cli, ligeiro.server.app, ligeiro.server.http, ligeiro.server.grpc\n"
        "from ligeiro.server.app import _tracing_enabled\n"
        "from ligeiro.settings import ServerSettings\n"
        "assert not _tracing_enabled(ServerSettings(), {})\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
