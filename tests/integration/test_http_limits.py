"""The ``[http]`` limits (issue 17) on raw sockets: each limit's status, how fast it
answers, and that a request under it still passes. One server with small limits."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Server, start_server
from tests.integration.test_security import _head, _raw
from tests.integration.test_security import iris_only as iris_only  # a fixture

LIMITS = """
[http]
max_url_bytes = 1024
max_header_bytes = 4096
max_headers = 20
header_timeout_s = 1.0
request_timeout_s = 2.5
receive_timeout_s = 30.0
max_connections = 8
max_requests_per_connection = 3
max_json_bytes = 4000
"""


@pytest.fixture(scope="module")
def limited(iris_only: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = tmp_path_factory.mktemp("limits") / "ligeiro.toml"
    config.write_text(LIMITS)
    srv = start_server(iris_only, "--threads", "1", "--config", str(config))
    yield srv
    srv.stop()


def test_url_over_the_limit_is_414(limited: Server) -> None:
    assert _raw(limited, _head(b"/v2/" + b"a" * 2000)).startswith(b"HTTP/1.1 414 ")
    assert _raw(limited, _head(b"/v2/health/live?" + b"a" * 900)).startswith(b"HTTP/1.1 200 ")


def test_a_huge_header_is_cut_as_it_arrives(limited: Server) -> None:
    start = time.monotonic()
    # 1 MB of one header line, sent in 64 kB pieces: refused long before its end.
    line = b"GET /v2/health/live HTTP/1.1\r\nx-big: "
    answer = _raw(limited, line, *([b"a" * 65536] * 16))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert b"request head over the limit of 4096 bytes" in answer
    assert time.monotonic() - start < 5
    assert _raw(limited, _head(extra=b"x-ok: " + b"a" * 3000 + b"\r\n")).startswith(b"HTTP/1.1 200")


def test_too_many_headers_is_431(limited: Server) -> None:
    many = b"".join(b"x-h%d: 1\r\n" % i for i in range(30))
    answer = _raw(limited, _head(extra=many))
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"more than 20 header fields" in answer


def test_slowloris_head_gets_408_though_never_silent(limited: Server) -> None:
    start = time.monotonic()
    head = _head()
    answer = _raw(limited, *(head[i : i + 1] for i in range(len(head) - 2)), pause_s=0.2)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert b"request head incomplete after 1 s" in answer
    assert time.monotonic() - start < 6


def test_slow_body_gets_408_at_the_request_time_limit(limited: Server) -> None:
    head = b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 200\r\n\r\n"
    start = time.monotonic()
    answer = _raw(limited, head, *([b" "] * 40), pause_s=0.2)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert b"request incomplete after 2.5 s" in answer
    assert 2.0 < time.monotonic() - start < 7


def test_a_silent_new_connection_is_closed(limited: Server) -> None:
    start = time.monotonic()
    assert _raw(limited) == b""
    assert time.monotonic() - start < 5


def test_connections_over_the_limit_get_503(limited: Server) -> None:
    held = [socket.create_connection((limited.host, limited.port), timeout=10) for _ in range(8)]
    try:
        answer = _raw(limited, _head())
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:100]
        assert b"limit of 8 connections" in answer
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while not _raw(limited, _head()).startswith(b"HTTP/1.1 200") and time.monotonic() < deadline:
        time.sleep(0.1)  # the server sees the closes
    assert _raw(limited, _head()).startswith(b"HTTP/1.1 200")


def test_requests_per_connection_are_bounded(limited: Server) -> None:
    answer = _raw(limited, _head(close=False) * 5)
    assert answer.count(b"HTTP/1.1 200 ") == 3  # the third answer closes the connection
    assert answer.count(b"connection: close") == 1


def test_json_body_limit_is_lower_than_binary(limited: Server) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2]] * 200
    body = {"inputs": [{"name": "float_input", "shape": [200, 4], "datatype": "FP32",
                        "data": rows}]}  # fmt: skip
    answer = limited.post("/v2/models/iris/infer", body)
    assert answer.status == 413
    assert "JSON request body of" in answer.json()["error"]
    assert "limit of 4000 bytes" in answer.json()["error"]
    # The same rows as binary tensor data pass (the JSON header is small).
    header = json.dumps({"inputs": [{"name": "float_input", "shape": [200, 4],
                         "datatype": "FP32", "parameters": {"binary_data_size": 3200}}]})
    data = np.array(rows, dtype=np.float32).tobytes()
    binary = limited.request(
        "POST", "/v2/models/iris/infer", header.encode() + data,
        {"inference-header-content-length": str(len(header))},
    )  # fmt: skip
    assert binary.status == 200, binary.body


def _post(srv: Server, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        conn.request("POST", "/v2/models/iris/infer", body, {"content-type": "application/json"})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"inputs":[{"name":"float_input","shape":[1000000000,4],"datatype":"FP32",'
         b'"data":[1,2,3,4]}]}', 400, b"holds 4000000000 elements, data has 4"),
        (b'{"inputs":[{"name":"float_input","shape":[1000000000,4],"datatype":"FP32",'
         b'"parameters":{"binary_data_size":16}}]}', 400, b""),
        (b'{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":'
         + b"[" * 3000, 400, b"invalid inference request"),
        (b"[" * 100_000, 413, b"over the limit of 4000 bytes"),
    ],
)  # fmt: skip
def test_huge_shapes_and_deep_nesting_are_refused_at_once(
    limited: Server, body: bytes, status: int, message: bytes
) -> None:
    start = time.monotonic()
    answer = _post(limited, body)
    assert answer[0] == status, answer
    assert message in answer[1]
    assert time.monotonic() - start < 1.0


def test_max_pipelined_is_a_setting(iris_only: Path, tmp_path: Path) -> None:
    config = tmp_path / "ligeiro.toml"
    config.write_text("[http]\nmax_pipelined = 2\n")
    srv = start_server(iris_only, "--threads", "1", "--config", str(config))
    try:
        # Ten requests in one write: reading pauses at two and resumes; all are answered,
        # in order, the last one closing.
        answers = _raw(srv, _head(close=False) * 9 + _head())
        assert answers.count(b"HTTP/1.1 200 ") == 10
    finally:
        srv.stop()
