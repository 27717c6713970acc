"""V2 REST conformance on a real socket: every endpoint, every datatype, every error."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EXAMPLE_NAMES, IRIS_REQUEST, Server, start_server
from tests.models import ONNX_TYPES

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def iris_request(**extra: object) -> dict[str, object]:
    return {**IRIS_REQUEST, **extra}


def test_health(server: Server) -> None:
    assert server.get("/v2/health/live").json() == {"live": True}
    assert server.get("/v2/health/ready").json() == {"ready": True}


# Server and model metadata are in test_conformance.py (tritonclient reads them as-is).


@pytest.mark.parametrize("path", ["/v2/models/iris/ready", "/v2/models/iris/versions/1/ready"])
def test_model_ready(server: Server, path: str) -> None:
    assert server.get(path).json() == {"name": "iris", "ready": True}


@pytest.mark.parametrize("path", ["/v2/models/iris/infer", "/v2/models/iris/versions/1/infer"])
def test_infer(server: Server, path: str) -> None:
    answer = server.post(path, iris_request(id="req-7"))
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["model_name"] == "iris"
    assert body["model_version"] == "1"
    assert body["id"] == "req-7"
    label, proba = body["outputs"]
    assert label == {"name": "output_label", "datatype": "INT64", "shape": [1], "data": [0]}
    assert proba["name"] == "output_probability"
    assert proba["shape"] == [1, 3]
    assert proba["data"][0] > 0.99
    assert sum(proba["data"]) == pytest.approx(1.0, abs=1e-5)


def test_infer_nested_data_and_batch(server: Server) -> None:
    rows = [IRIS_ROW, [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    request = {
        "inputs": [{"name": "float_input", "shape": [3, 4], "datatype": "FP32", "data": rows}]
    }
    body = server.post("/v2/models/iris/infer", request).json()
    assert body["outputs"][0]["data"] == [0, 2, 1]
    assert body["outputs"][1]["shape"] == [3, 3]
    assert len(body["outputs"][1]["data"]) == 9  # flat on the way out, as Triton answers


def test_infer_output_selection(server: Server) -> None:
    body = server.post(
        "/v2/models/iris/infer", iris_request(outputs=[{"name": "output_probability"}])
    ).json()
    assert [o["name"] for o in body["outputs"]] == ["output_probability"]
    assert "id" not in body


def test_pipelining_and_keep_alive(server: Server) -> None:
    payload = b'{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}'
    one = b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (
        len(payload),
        payload,
    )
    two = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(one + two + one)  # three requests in one write
        answers = read_responses(sock, 3)
    assert [status for status, _ in answers] == [200, 200, 200]
    assert b'"output_label"' in answers[0][1]
    assert answers[1][1] == b'{"live":true}'
    assert answers[2][1] == answers[0][1]


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Read ``count`` HTTP responses (Content-Length framed) from a raw socket."""
    data, answers = b"", []
    while len(answers) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode()
            length = int(re.search(r"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            if len(data) >= head_end + 4 + length:
                answers.append((int(head.split()[1]), data[head_end + 4 : head_end + 4 + length]))
                data = data[head_end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(answers)} answers"
        data += chunk
    return answers


def test_expect_100_continue(server: Server) -> None:
    answer = server.request(
        "POST",
        "/v2/models/iris/infer",
        str(iris_request()).replace("'", '"'),
        {"expect": "100-continue"},
    )
    assert answer.status == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        (
            "POST",
            "/v2/models/iris/infer",
            "{not json",
            400,
            "invalid inference request: JSON is malformed",
        ),
        (
            "POST",
            "/v2/models/iris/infer",
            '{"inputs": 3}',
            400,
            r"Expected `array`, got `int` - at `\$.inputs`",
        ),
        (
            "POST",
            "/v2/models/iris/infer",
            '{"inputs": [{"name": "float_input"}]}',
            400,
            "missing required field `shape`",
        ),
        (
            "POST",
            "/v2/models/iris/infer",
            '{"inputs":[{"name":"float_input","shape":[1,5],"datatype":"FP32","data":[1,2,3,4,5]}]}',
            400,
            r"input 'float_input': expected shape \[-1, 4\], got \[1, 5\]",
        ),
        (
            "POST",
            "/v2/models/iris/infer",
            '{"inputs":[{"name":"float_input","shape":[4],"datatype":"FP32","data":[1,2,3,4]}]}',
            400,
            r"expected shape \[-1, 4\], got \[4\] \(missing batch axis\?\)",
        ),
        (
            "POST",
            "/v2/models/iris/infer",
            '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP64","data":[1,2,3,4]}]}',
            400,
            "input 'float_input': expected dtype float32, got float64",
        ),
        (
            "POST",
            "/v2/models/iris/infer",
            '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP99","data":[1,2,3,4]}]}',
            400,
            "unknown datatype 'FP99'",
        ),
        (
            "POST",
            "/v2/models/iris/infer",
            '{"inputs":[{"name":"petals","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}',
            400,
            "unknown input 'petals', missing input 'float_input'; it takes float_input",
        ),
        (
            "POST",
            "/v2/models/iris/infer",
            '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[1,2,3]}]}',
            400,
            r"shape \[1, 4\] holds 4 elements, data has 3",
        ),
        (
            "POST",
            "/v2/models/iris/infer",
            '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":["a","b","c","d"]}]}',
            400,
            "FP32 data must be numbers, got str 'a'",
        ),
        (
            "POST",
            "/v2/models/iris/infer",
            '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"nope"}]}',
            400,
            "unknown output 'nope'; it gives output_label, output_probability",
        ),
        (
            "POST",
            "/v2/models/unknown/infer",
            "{}",
            404,
            f"unknown model 'unknown'; the repository has {EXAMPLE_NAMES}",
        ),
        (
            "POST",
            "/v2/models/iris/versions/9/infer",
            "{}",
            404,
            "model 'iris' has no version '9'; versions: 1",
        ),
        ("GET", "/v2/models/unknown", None, 404, "unknown model 'unknown'"),
        ("GET", "/v2/models/iris/infer", None, 405, "method not allowed; use POST"),
        ("POST", "/v2/health/ready", "{}", 405, "method not allowed; use GET"),
        ("GET", "/v3/anything", None, 404, "no route for /v3/anything"),
        ("GET", "/v2/models/iris/weights", None, 404, "no route for /v2/models/iris/weights"),
    ],
)
def test_errors(
    server: Server, method: str, path: str, body: str | None, status: int, message: str
) -> None:
    answer = server.request(method, path, body)
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert re.search(message, error), error


def test_head_has_get_headers_and_no_body(server: Server) -> None:
    get = server.get("/v2/models/iris")
    head = server.request("HEAD", "/v2/models/iris")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(get.body))
    assert server.get("/v2/health/live").status == 200  # the connection is still in sync


def test_method_not_allowed_names_the_method(server: Server) -> None:
    answer = server.request("DELETE", "/v2/models/iris/infer")
    assert answer.status == 405
    assert answer.headers["allow"] == "POST"


def test_malformed_http_gets_400_and_server_lives_on(server: Server) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    assert server.get("/v2/health/live").status == 200


# -- every datatype through a real model -------------------------------------------

EXAMPLES = {
    "BOOL": [[True, False], [False, True]],
    "UINT8": [[0, 255], [1, 2]],
    "UINT16": [[0, 65535], [1, 2]],
    "UINT32": [[0, 4294967295], [1, 2]],
    "UINT64": [[0, 18446744073709551615], [1, 2]],
    "INT8": [[-128, 127], [0, 1]],
    "INT16": [[-32768, 32767], [0, 1]],
    "INT32": [[-2147483648, 2147483647], [0, 1]],
    "INT64": [[-9223372036854775808, 9223372036854775807], [0, 1]],
    "FP16": [[0.5, -1.25], [65504.0, 0.0]],
    "FP32": [[0.1, -2.5], [3.4e38, 0.0]],
    "FP64": [[0.1, -2.5], [1e300, 0.0]],
    "BYTES": [["olá", "mundo"], ["", "ligeiro"]],
}


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "nested"])
def test_every_datatype_round_trips(identity_server: Server, flat: bool) -> None:
    inputs = [
        {
            "name": f"in_{dt}",
            "datatype": dt,
            "shape": [2, 2],
            "data": [v for row in data for v in row] if flat else data,
        }
        for dt, data in EXAMPLES.items()
    ]
    answer = identity_server.post("/v2/models/identity/infer", {"inputs": inputs})
    assert answer.status == 200, answer.body
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert set(outputs) == {f"out_{dt}" for dt in ONNX_TYPES}
    for dt, data in EXAMPLES.items():
        out = outputs[f"out_{dt}"]
        assert out["datatype"] == dt
        assert out["shape"] == [2, 2]
        expected = [v for row in data for v in row]
        if dt == "FP32":
            expected = np.array(expected, dtype=np.float32).tolist()
        assert out["data"] == expected, dt


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT32", [1.5, 2, 3, 4], "INT32 data must be integers, got float 1.5"),
        ("INT8", [1, 2, 3, 300], "data out of range for INT8: Python integer 300 out of bounds"),
        ("UINT8", [1, 2, 3, -1], "data out of range for UINT8: Python integer -1 out of bounds"),
        ("BOOL", [1, 0, 1, 0], "BOOL data must be true/false, got int 1"),
        ("BYTES", [1, 2, 3, 4], "BYTES data must be strings, got int"),
        ("FP16", [[1, 2], [3]], "data does not fit FP16"),
    ],
)
def test_bad_data_for_datatype(
    identity_server: Server, datatype: str, data: list[object], message: str
) -> None:
    inputs = [
        {"name": f"in_{dt}", "datatype": dt, "shape": [2, 2], "data": [v for r in d for v in r]}
        for dt, d in EXAMPLES.items()
    ]
    for tensor in inputs:
        if tensor["datatype"] == datatype:
            tensor["data"] = data
    answer = identity_server.post("/v2/models/identity/infer", {"inputs": inputs})
    assert answer.status == 400
    assert message in answer.json()["error"]


def test_body_over_limit_is_413(repository: Path) -> None:
    srv = start_server(repository, "--threads", "1", "--max-request-bytes", "1000")
    try:
        data = ",".join(["1"] * 1000)
        big = f'{{"inputs":[{{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[{data}]}}]}}'
        answer = srv.post("/v2/models/iris/infer", big)
        assert answer.status == 413
        assert (
            answer.json()["error"]
            == f"request body of {len(big)} bytes is over the limit of 1000 bytes"
        )
        assert answer.headers["connection"] == "close"
        assert srv.post("/v2/models/iris/infer", iris_request()).status == 200
    finally:
        assert srv.stop() == 0


def test_idle_and_stalled_connections_are_closed(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIGEIRO_HTTP__KEEP_ALIVE_TIMEOUT_S", "0.5")
    monkeypatch.setenv("LIGEIRO_HTTP__RECEIVE_TIMEOUT_S", "0.5")
    srv = start_server(repository, "--threads", "1")
    try:
        with (
            socket.create_connection((srv.host, srv.port), timeout=10) as idle,
            socket.create_connection((srv.host, srv.port), timeout=10) as stalled,
        ):
            idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            assert read_responses(idle, 1) == [(200, b'{"live":true}')]
            stalled.sendall(
                b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 90\r\n\r\n{"
            )
            assert idle.recv(65536) == b""  # closed after 0.5-1.5 s of idleness
            answer = stalled.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
            assert b"request incomplete after 0.5 s of silence" in answer
        assert srv.post("/v2/models/iris/infer", iris_request()).status == 200  # others unaffected
    finally:
        assert srv.stop() == 0
