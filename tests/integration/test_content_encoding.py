"""Compressed request bodies over REST (``Content-Encoding``), as Triton's clients send
them: gzip and deflate decode, anything else is refused, and a small bomb stays small."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import IRIS_REQUEST, Server, start_server

BODY = json.dumps(IRIS_REQUEST).encode()


def post(srv: Server, body: bytes, encoding: str) -> tuple[int, dict[str, object]]:
    answer = srv.request(
        "POST",
        "/v2/models/iris/infer",
        body,
        {"content-type": "application/json", "content-encoding": encoding},
    )
    return answer.status, answer.json()


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),
        ("identity", BODY),
    ],
)
def test_a_compressed_body_is_decoded(server: Server, encoding: str, body: bytes) -> None:
    status, answer = post(server, body, encoding)
    assert status == 200, answer
    assert answer["outputs"][0]["data"] == [0]  # type: ignore[index]


def test_tritonclient_sends_gzip_and_deflate(server: Server) -> None:
    client = httpclient.InferenceServerClient(f"{server.host}:{server.port}")
    x = httpclient.InferInput("float_input", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    for algorithm in ("gzip", "deflate"):
        result = client.infer("iris", [x], request_compression_algorithm=algorithm)
        assert result.as_numpy("output_label").tolist() == [2]
    client.close()


@pytest.mark.parametrize(
    ("encoding", "body", "status", "message"),
    [
        ("br", BODY, 415, "Content-Encoding 'br' is not supported; send gzip, deflate or identity"),
        ("gzip", b"not gzip at all", 400, "the body is not valid gzip: "),
        ("gzip", gzip.compress(BODY)[:-12], 400, "the gzip body is cut short"),
        ("deflate", gzip.compress(BODY), 400, "the body is not valid deflate: "),
    ],
)
def test_a_body_that_does_not_decode_is_refused(
    server: Server, encoding: str, body: bytes, status: int, message: str
) -> None:
    got, answer = post(server, body, encoding)
    assert got == status
    assert str(answer["error"]).startswith(message)


@pytest.fixture(scope="module")
def small(examples: Path) -> Iterator[Server]:
    srv = start_server(examples, "--threads", "1", "--max-request-bytes", "65536")
    yield srv
    srv.stop()


def test_a_body_that_decodes_past_the_limit_is_refused(small: Server) -> None:
    bomb = gzip.compress(b" " * 10_000_000)  # 10 MB of spaces in about 10 kB
    assert len(bomb) < 65536
    status, answer = post(small, bomb, "gzip")
    assert status == 413
    assert answer["error"] == "the gzip body decodes to more than the limit of 65536 bytes"
    assert post(small, gzip.compress(BODY), "gzip")[0] == 200  # and it keeps serving
