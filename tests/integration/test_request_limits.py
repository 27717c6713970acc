"""The server-wide request limits (issue 17): rows per request and BYTES element size,
refused once in the data plane for every transport. One server with small limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import Server, start_server
from tests.integration.test_bytes_tensors import ECHO_CONFIG, ECHO_MODEL

ROWS = 50
ELEMENT = 1000
LIMITS = f"max_request_rows = {ROWS}\nmax_bytes_element_bytes = {ELEMENT}\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Path:
    root = tmp_path_factory.mktemp("request-limits")
    (root / "iris").symlink_to(examples / "iris")
    (root / "echo" / "1").mkdir(parents=True)
    (root / "echo" / "config.toml").write_text(ECHO_CONFIG)
    (root / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    (root / "ligeiro.toml").write_text(LIMITS)
    return root


def _start(repo: Path, *args: str) -> Server:
    return start_server(repo, "--threads", "1", "--config", str(repo / "ligeiro.toml"), *args)


@pytest.fixture(scope="module")
def limited(repo: Path) -> Iterator[Server]:
    srv = _start(repo)
    yield srv
    srv.stop()


def _iris(rows: int) -> dict[str, object]:
    data = [5.1, 3.5, 1.4, 0.2] * rows
    tensor = {"name": "float_input", "shape": [rows, 4], "datatype": "FP32", "data": data}
    return {"inputs": [tensor]}


def _text(text: str) -> dict[str, object]:
    return {"inputs": [{"name": "blob", "shape": [1], "datatype": "BYTES", "data": [text]}]}


def test_rows_over_the_limit_over_json_infer_and_predict(limited: Server) -> None:
    assert limited.post("/v2/models/iris/infer", _iris(ROWS)).status == 200
    answer = limited.post("/v2/models/iris/infer", _iris(ROWS + 1))
    assert answer.status == 400
    error = answer.json()["error"]
    assert f"input 'float_input': {ROWS + 1} rows" in error
    assert f"limit of {ROWS} (max_request_rows)" in error
    instances = [[5.1, 3.5, 1.4, 0.2]] * (ROWS + 1)
    answer = limited.post("/v1/models/iris:predict", {"instances": instances})
    assert answer.status == 400
    assert "(max_request_rows)" in answer.json()["error"]
    assert limited.post("/v1/models/iris:predict", {"instances": instances[:ROWS]}).status == 200


def test_bytes_element_over_the_limit_over_json_counts_utf8_bytes(limited: Server) -> None:
    assert limited.post("/v2/models/echo/infer", _text("a" * ELEMENT)).status == 200
    assert limited.post("/v2/models/echo/infer", _text("é" * (ELEMENT // 2))).status == 200
    # 600 characters, 1,200 bytes of UTF-8: over the limit though the text is shorter.
    answer = limited.post("/v2/models/echo/infer", _text("é" * 600))
    assert answer.status == 400
    error = answer.json()["error"]
    assert "input 'blob': BYTES element 0 is 1200 bytes, more than the server's limit" in error
    assert f"limit of {ELEMENT} (max_bytes_element_bytes)" in error


def test_limits_over_binary_http(limited: Server) -> None:
    client = httpclient.InferenceServerClient(url=f"{limited.host}:{limited.port}")
    try:
        blob = httpclient.InferInput("blob", [3], "BYTES")
        blob.set_data_from_numpy(np.array([b"x", b"\xff" * (ELEMENT + 1), b"y"], dtype=object))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("echo", [blob])
        assert "BYTES element 1 is 1001 bytes" in str(caught.value)
        assert "(max_bytes_element_bytes)" in str(caught.value)
        rows = httpclient.InferInput("float_input", [ROWS + 1, 4], "FP32")
        rows.set_data_from_numpy(np.ones((ROWS + 1, 4), dtype=np.float32), binary_data=True)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("iris", [rows])
        assert "(max_request_rows)" in str(caught.value)
        assert caught.value.status() == "400"
        blob.set_shape([1])
        blob.set_data_from_numpy(np.array([b"\xff" * ELEMENT], dtype=object))
        assert client.infer("echo", [blob]).as_numpy("same").tolist() == [b"\xff" * ELEMENT]
    finally:
        client.close()


@pytest.mark.parametrize("transport", ["h2", "grpcio"])
def test_limits_over_grpc(limited: Server, repo: Path, transport: str) -> None:
    srv = limited if transport == "h2" else _start(repo, "--grpc-transport", "grpcio")
    try:
        with grpcclient.InferenceServerClient(srv.grpc_target) as client:
            rows = grpcclient.InferInput("float_input", [ROWS + 1, 4], "FP32")
            rows.set_data_from_numpy(np.ones((ROWS + 1, 4), dtype=np.float32))
            with pytest.raises(InferenceServerException) as caught:
                client.infer("iris", [rows])
            assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert f"{ROWS + 1} rows" in str(caught.value)
            assert "(max_request_rows)" in str(caught.value)
            blob = grpcclient.InferInput("blob", [1], "BYTES")
            blob.set_data_from_numpy(np.array([b"z" * (ELEMENT + 1)], dtype=object))
            with pytest.raises(InferenceServerException) as caught:
                client.infer("echo", [blob])
            assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "(max_bytes_element_bytes)" in str(caught.value)
            rows = grpcclient.InferInput("float_input", [ROWS, 4], "FP32")
            rows.set_data_from_numpy(np.ones((ROWS, 4), dtype=np.float32))
            assert client.infer("iris", [rows]).as_numpy("output_label").shape == (ROWS,)
    finally:
        if srv is not limited:
            srv.stop()
