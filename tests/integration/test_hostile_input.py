"""Input a fuzzer found answered 500/INTERNAL, or a connection left stalled: each is now
a 400/INVALID_ARGUMENT with a precise message, on a real socket, and nothing is logged
as a traceback."""

from __future__ import annotations

import socket

import grpc

import pytest

from ligeiro.protocol._generated import grpc_service_pb2 as pb
from tests.conftest import Server
from tests.integration.test_v2_rest import read_responses

FLOAT_INPUT = {"name": "float_input", "shape": [1, 4], "datatype": "FP32"}
HUGE = [0, 2**62]


def post(server: Server, path: str, body: bytes, **headers: str) -> tuple[int, str]:
    answer = server.request("POST", path, body, {"content-type": "application/json", **headers})
    return answer.status, answer.json()["error"]


def assert_no_traceback(server: Server) -> None:
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/models/iris/infer", b'{"id":"\xff","inputs":[]}'),
        ("/v2/models/iris/infer", b'{"inputs":[{"name":"\xc3\x28","shape":[1],"datatype":"FP32","data":[1]}]}'),
        ("/v1/models/iris:predict", b'{"sepal_length":"\xff"}'),
        ("/v1/models/iris:predict", b'{"\xed\xa0\x80":1}'),
    ],
)  # fmt: skip
def test_invalid_utf8_in_a_json_string_is_400(server: Server, path: str, body: bytes) -> None:
    status, error = post(server, path, body)
    assert status == 400
    assert "a JSON string is not valid UTF-8" in error
    assert_no_traceback(server)


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/v2/models/iris/infer",
         b'{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32",'
         b'"data":[1e39,1,1,1]}]}',
         "input 'float_input': data out of range for FP32: overflow encountered in cast"),
        ("/v2/models/iris/infer",
         b'{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32",'
         b'"data":[-3.5e38,1,1,1]}]}',
         "input 'float_input': data out of range for FP32: overflow encountered in cast"),
        ("/v1/models/iris:predict", b'{"instances":[[1e39,1,1,1]]}',
         "instances do not form a float32 matrix: overflow encountered in cast"),
    ],
)  # fmt: skip
def test_a_number_out_of_the_float_range_is_400(
    server: Server, path: str, body: bytes, error: str
) -> None:
    """Found by fuzzing the REST decoder: numpy turned 1e39 into an FP32 inf (a warning
    logged) and the model answered 200 with NaN probabilities."""
    assert post(server, path, body) == (400, error)
    assert "RuntimeWarning" not in server.output()
    assert_no_traceback(server)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/models/iris/infer", b'{"inputs":[{"name":"float_input","shape":[1],"datatype":"FP32","data":'
         + b"[" * 1000 + b"1" + b"]" * 1000 + b"}]}"),
        ("/v1/models/iris:predict", b'{"instances":' + b"[" * 1000 + b"]" * 1000 + b"}"),
        ("/v1/models/iris:predict", b"[" * 1000 + b"]" * 1000),
    ],
)  # fmt: skip
def test_json_nested_too_deeply_is_400(server: Server, path: str, body: bytes) -> None:
    status, error = post(server, path, body)
    assert status == 400
    assert error.endswith("JSON nested too deeply")
    assert_no_traceback(server)


def too_large(shape: list[int]) -> str:
    return f"shape {shape} is too large"


@pytest.mark.parametrize(
    ("datatype", "shape"), [("FP32", HUGE), ("BYTES", HUGE), ("BYTES", [0, 2**31, 2**31])]
)
def test_a_shape_too_large_for_any_array_is_400_in_json(
    server: Server, datatype: str, shape: list[int]
) -> None:
    body = {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": []}]}
    answer = server.post("/v2/models/iris/infer", body)
    assert answer.status == 400
    assert answer.json()["error"].startswith(f"input 'x': {too_large(shape)}")
    assert_no_traceback(server)


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_a_shape_too_large_for_any_array_is_400_in_binary(server: Server, datatype: str) -> None:
    head = (
        b'{"inputs":[{"name":"x","shape":[0,%d],"datatype":"%s",'
        b'"parameters":{"binary_data_size":0}}]}' % (2**62, datatype.encode())
    )
    status, error = post(
        server, "/v2/models/iris/infer", head, **{"inference-header-content-length": str(len(head))}
    )
    assert status == 400
    assert error.startswith(f"input 'x': {too_large(HUGE)}")
    assert_no_traceback(server)


@pytest.mark.parametrize("contents", ["raw", "typed"])  # the wire scanner, then protobuf
@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_a_shape_too_large_for_any_array_is_invalid_argument_in_grpc(
    server: Server, contents: str, datatype: str
) -> None:
    request = pb.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=HUGE)
    if contents == "raw":
        request.raw_input_contents.append(b"")
    else:
        tensor.contents.SetInParent()
    with grpc.insecure_channel(server.grpc_target) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            infer(request.SerializeToString(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(f"input 'x': {too_large(HUGE)}")
    assert_no_traceback(server)


def test_a_burst_of_pipelined_requests_is_all_answered_and_the_connection_lives_on(
    server: Server,
) -> None:
    # One write of 200 requests: the parser queues them all in one read, past the
    # 64 answers a connection may hold pending; reading must resume once they drain.
    request = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request * 200)
        answers = read_responses(sock, 200)
        assert [status for status, _ in answers] == [200] * 200
        sock.sendall(request)
        assert read_responses(sock, 1) == [(200, b'{"live":true}')]
