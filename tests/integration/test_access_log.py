"""The access log on real sockets: one whole JSON line per inference request, both
transports, and none unless asked for."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ligeiro.client import GrpcClient
from tests.conftest import IRIS_REQUEST, start_server


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_inference_request_is_one_json_line(
    repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    log = tmp_path / "access.jsonl"
    monkeypatch.setenv("LIGEIRO_ACCESS_LOG", str(log))
    srv = start_server(repository, "--threads", "1", "--workers", workers)
    try:
        assert srv.post("/v2/models/iris/infer", {**IRIS_REQUEST, "id": "req-1"}).status == 200
        assert srv.post("/v2/models/iris/infer", {"inputs": []}).status == 400
        assert srv.post("/v2/models/roses/infer", IRIS_REQUEST).status == 404
        assert srv.get("/v2/health/ready").status == 200  # not an inference: not logged
        with GrpcClient(srv.grpc_target) as client:
            x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
            client.infer("iris", {"float_input": x}, request_id="g-1")
        for _ in range(40):  # several connections, so both workers answer some
            assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).status == 200
            srv.request("GET", "/v2/health/live", headers={"connection": "close"})
    finally:
        assert srv.stop() == 0
    records = lines(log)
    assert len(records) == 44
    # Each worker writes its own lines: with two, the file interleaves them in the order
    # the workers flushed, not the order of the requests. Find each by what it is.
    (first,) = [r for r in records if r.get("request_id") == "req-1"]
    (bad,) = [r for r in records if r["status"] == "400"]
    (missing,) = [r for r in records if r["status"] == "404"]
    (via_grpc,) = [r for r in records if r["protocol"] == "grpc"]
    if workers == "1":  # one writer: the file is in request order
        assert records[:4] == [first, bad, missing, via_grpc]
    assert {k: first[k] for k in ("protocol", "model", "version", "status", "request_id")} == {
        "protocol": "http",
        "model": "iris",
        "version": "1",
        "status": "200",
        "request_id": "req-1",
    }
    assert 0 < first["latency_ms"] < 10_000
    assert abs(first["time"] - os.path.getmtime(log)) < 120
    assert (bad["status"], bad["model"], "request_id" in bad) == ("400", "iris", False)
    assert (missing["status"], missing["model"]) == ("404", "")
    assert (via_grpc["protocol"], via_grpc["status"], via_grpc["request_id"]) == (
        "grpc",
        "OK",
        "g-1",
    )
    assert {r["pid"] for r in records} <= set(range(1, 2**22))
    if workers == "2":
        assert len({r["pid"] for r in records}) == 2


@pytest.mark.parametrize(("setting", "logged"), [(None, 0), ("-", 1)])
def test_standard_output_gets_the_log_only_when_asked(
    repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str | None,
    logged: int,
) -> None:
    if setting is None:
        monkeypatch.delenv("LIGEIRO_ACCESS_LOG", raising=False)
    else:
        monkeypatch.setenv("LIGEIRO_ACCESS_LOG", setting)
    out = tmp_path / "stdout"
    srv = start_server(repository, "--threads", "1", stdout=out)
    try:
        assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).status == 200
    finally:
        assert srv.stop() == 0
    assert [r["status"] for r in lines(out)] == ["200"] * logged
