"""V2 gRPC on a real socket: our stubs for the wire details tritonclient cannot reach.

What both transports share, through tritonclient, is in ``test_conformance.py``.
"""

from __future__ import annotations

import queue
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import helper

from ligeiro.protocol._generated import grpc_service_pb2 as pb
from ligeiro.protocol._generated.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.conftest import EXAMPLE_NAMES, Server, start_server
from tests.models import ONNX_TYPES, identity_model, write

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]

# One value per cell of a [2, 2] tensor, for every V2 datatype of the identity model.
ARRAYS: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([[0, 255], [1, 2]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535], [1, 2]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1], [1, 2]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1], [1, 2]], dtype=np.uint64),
    "INT8": np.array([[-128, 127], [0, -1]], dtype=np.int8),
    "INT16": np.array([[-32768, 32767], [0, -1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1], [0, -1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1], [0, -1]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25], [65504, 1e-3]], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5], [3.4e38, 1e-7]], dtype=np.float32),
    "FP64": np.array([[0.1, -2.5], [1e300, 1e-300]], dtype=np.float64),
    "BYTES": np.array([["a", ""], ["ção", "x y"]], dtype=object),
}
CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def raw(array: np.ndarray) -> bytes:
    if array.dtype.kind == "O":
        parts = [v.encode() for v in array.ravel()]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def from_raw(data: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        values, offset = [], 0
        while offset < len(data):
            (size,) = struct.unpack_from("<I", data, offset)
            values.append(data[offset + 4 : offset + 4 + size].decode())
            offset += 4 + size
        return np.array(values, dtype=object).reshape(shape)
    return np.frombuffer(data, dtype=ARRAYS[datatype].dtype).reshape(shape)


def iris_request(typed: bool = False, **extra: object) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="float_input", datatype="FP32", shape=[1, 4]
    )
    request = pb.ModelInferRequest(model_name="iris", inputs=[tensor], **extra)  # type: ignore[arg-type]
    if typed:
        request.inputs[0].contents.fp32_contents.extend(IRIS_ROW)
    else:
        request.raw_input_contents.append(np.array(IRIS_ROW, dtype=np.float32).tobytes())
    return request


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield GRPCInferenceServiceStub(channel)


def call_error(method: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        method(request)  # type: ignore[operator]
    return info.value


def test_infer_typed_contents(stub: GRPCInferenceServiceStub) -> None:
    # tritonclient always sends raw_input_contents (see test_conformance.py); typed here.
    answer = stub.ModelInfer(iris_request(typed=True, id="req-7"))
    assert answer.model_name == "iris"
    assert answer.model_version == "1"
    assert answer.id == "req-7"
    label, proba = answer.outputs
    assert (label.name, label.datatype, list(label.shape)) == ("output_label", "INT64", [1])
    assert (proba.name, proba.datatype, list(proba.shape)) == ("output_probability", "FP32", [1, 3])
    assert np.frombuffer(answer.raw_output_contents[0], dtype="<i8").tolist() == [0]
    probabilities = np.frombuffer(answer.raw_output_contents[1], dtype="<f4")
    assert probabilities[0] > 0.99
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def bad_iris(**changes: object) -> pb.ModelInferRequest:
    request = iris_request()
    for key, value in changes.items():
        if key == "shape":
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(value)  # type: ignore[arg-type]
        elif key == "raw":
            request.raw_input_contents[0] = value  # type: ignore[assignment]
        else:
            setattr(request.inputs[0], key, value)
    return request


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            bad_iris(shape=[2, 4]),
            "input 'float_input': shape [2, 4] holds 8 elements, raw_input_contents has 4",
        ),
        (
            bad_iris(shape=[1, -4]),
            "input 'float_input': shape [1, -4] has a negative dimension",
        ),
        (
            bad_iris(datatype="FP99"),
            "input 'float_input': unknown datatype 'FP99'",
        ),
        (
            pb.ModelInferRequest(model_name="iris", inputs=[iris_request().inputs[0]]),
            "input 'float_input': no data (expected contents or raw_input_contents)",
        ),
    ],
    ids=["raw-size", "negative-dim", "datatype", "no-data"],
)
def test_wire_errors(
    stub: GRPCInferenceServiceStub, request_: pb.ModelInferRequest, message: str
) -> None:
    # What tritonclient can send is in test_conformance.py; these it cannot.
    error = call_error(stub.ModelInfer, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")


def test_typed_contents_errors(stub: GRPCInferenceServiceStub) -> None:
    request = iris_request(typed=True)
    request.inputs[0].contents.fp32_contents.append(1.0)
    error = call_error(stub.ModelInfer, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "input 'float_input': shape [1, 4] holds 4 elements, contents.fp32_contents has 5"
    )
    request = iris_request(typed=True)
    request.inputs[0].contents.int_contents.append(1)
    error = call_error(stub.ModelInfer, request)
    assert error.details() == (
        "input 'float_input': FP32 data belongs in contents.fp32_contents, got int_contents"
    )
    request = iris_request(typed=True)
    request.raw_input_contents.append(b"\0" * 16)
    error = call_error(stub.ModelInfer, request)
    assert error.details() == (
        "input 'float_input': both contents and raw_input_contents given; use one of them"
    )


def test_stream_answers_each_request_and_survives_errors(stub: GRPCInferenceServiceStub) -> None:
    requests = [iris_request(id="a"), bad_iris(shape=[4]), iris_request(typed=True, id="c")]
    answers = list(stub.ModelStreamInfer(iter(requests)))
    assert len(answers) == 3
    assert answers[0].error_message == ""
    assert answers[0].infer_response.id == "a"
    assert "expected shape [-1, 4], got [4]" in answers[1].error_message
    assert answers[2].infer_response.id == "c"
    assert np.frombuffer(answers[2].infer_response.raw_output_contents[0], "<i8").tolist() == [0]


def test_repository_and_statistics(stub: GRPCInferenceServiceStub) -> None:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    states = {(m.name, m.version): m.state for m in index.models}
    assert states[("iris", "1")] == states[("mlp", "1")] == "READY"
    assert sorted({m.name for m in index.models}) == EXAMPLE_NAMES.split(", ")
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="iris"))
    assert [(s.name, s.version) for s in stats.model_stats] == [("iris", "1")]
    error = call_error(stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # Loading and unloading need --model-control explicit (test_lifecycle.py has them).
    error = call_error(stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="iris"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs --model-control explicit" in (error.details() or "")
    error = call_error(
        stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="iris")
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_requests_are_counted_with_protocol_grpc(
    server: Server, stub: GRPCInferenceServiceStub
) -> None:
    stub.ModelInfer(iris_request())
    call_error(stub.ModelInfer, bad_iris(shape=[4]))
    text = server.get("/metrics").body.decode()
    assert (
        'ligeiro_inference_requests_total{code="OK",model="iris",protocol="grpc",version="1"}'
        in text
    )
    assert 'code="INVALID_ARGUMENT",model="iris",protocol="grpc"' in text


# -- every datatype through the identity model ------------------------------------------


def typed_identity_model() -> onnx.ModelProto:
    """The identity model without FP16, which has no typed contents field."""
    nodes, inputs, outputs = [], [], []
    for name, elem in ONNX_TYPES.items():
        if name != "FP16":
            inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["batch", "n"]))
            outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["batch", "n"]))
            nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    graph = helper.make_graph(nodes, "typed_identity", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def identity_stub(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GRPCInferenceServiceStub]:
    """A server with ``identity`` (every datatype) and ``typed`` (every one but FP16)."""
    root = tmp_path_factory.mktemp("grpc-identity")
    write(identity_model(), root, "identity")
    write(typed_identity_model(), root, "typed")
    srv = start_server(root, "--threads", "1")
    try:
        with grpc.insecure_channel(srv.grpc_target) as channel:
            yield GRPCInferenceServiceStub(channel)
    finally:
        srv.stop()


def identity_request(typed: bool, model: str = "identity") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for datatype, array in ARRAYS.items():
        if model == "typed" and datatype == "FP16":
            continue
        tensor = request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=array.shape)
        if not typed:
            request.raw_input_contents.append(raw(array))
        elif datatype == "FP16":
            tensor.contents.SetInParent()
        else:
            values = array.ravel().tolist()
            if datatype == "BYTES":
                values = [v.encode() for v in values]
            getattr(tensor.contents, CONTENTS[datatype]).extend(values)
    return request


def outputs_of(answer: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        o.name: from_raw(data, o.datatype, list(o.shape))
        for o, data in zip(answer.outputs, answer.raw_output_contents, strict=True)
    }


def test_every_datatype_but_fp16_round_trips_typed(
    identity_stub: GRPCInferenceServiceStub,
) -> None:
    outputs = outputs_of(identity_stub.ModelInfer(identity_request(typed=True, model="typed")))
    assert len(outputs) == len(ARRAYS) - 1
    for datatype, array in ARRAYS.items():
        if datatype != "FP16":
            np.testing.assert_array_equal(outputs[f"out_{datatype}"], array, err_msg=datatype)


def test_fp16_has_no_typed_contents(identity_stub: GRPCInferenceServiceStub) -> None:
    error = call_error(identity_stub.ModelInfer, identity_request(typed=True))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "input 'in_FP16': FP16 has no typed contents field; send it in raw_input_contents"
    )


@pytest.mark.parametrize(
    ("datatype", "values", "message"),
    [
        ("INT8", [1, 2, 3, 300], "data out of range for INT8: 300 is not in [-128, 127]"),
        ("UINT8", [1, 2, 3, 256], "data out of range for UINT8: 256 is not in [0, 255]"),
        ("BYTES", [b"a", b"b", b"c", b"\xff"], "BYTES element 3 is not UTF-8 text"),
    ],
)
def test_typed_out_of_range(
    identity_stub: GRPCInferenceServiceStub, datatype: str, values: list[object], message: str
) -> None:
    request = identity_request(typed=True, model="typed")
    for tensor in request.inputs:
        if tensor.datatype == datatype:
            field = getattr(tensor.contents, CONTENTS[datatype])
            del field[:]
            field.extend(values)
    error = call_error(identity_stub.ModelInfer, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")


def test_raw_bytes_framing_errors(identity_stub: GRPCInferenceServiceStub) -> None:
    request = identity_request(typed=False)
    index = list(ARRAYS).index("BYTES")
    request.raw_input_contents[index] = struct.pack("<I", 10) + b"abc"
    error = call_error(identity_stub.ModelInfer, request)
    assert error.details() == "input 'in_BYTES': BYTES element 0 says 10 bytes, only 3 are left"
    request.raw_input_contents[index] = raw(np.array(["a", "b", "c"], dtype=object))
    error = call_error(identity_stub.ModelInfer, request)
    assert error.details() == (
        "input 'in_BYTES': shape [2, 2] holds 4 elements, raw_input_contents has 3"
    )


# -- limits, several workers --------------------------------------------------------------


def test_message_over_limit_is_resource_exhausted(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIGEIRO_GRPC__MAX_MESSAGE_BYTES", "1000")
    srv = start_server(repository, "--threads", "1")
    try:
        with grpc.insecure_channel(srv.grpc_target) as channel:
            stub = GRPCInferenceServiceStub(channel)
            big = iris_request()
            big.raw_input_contents[0] = b"\0" * 2000
            error = call_error(stub.ModelInfer, big)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in (error.details() or "")
            # The server keeps serving on the same channel.
            assert stub.ModelInfer(iris_request()).model_name == "iris"
    finally:
        assert srv.stop() == 0


def test_several_workers_share_the_grpc_port(repository: Path) -> None:
    srv = start_server(repository, "--threads", "1", "--workers", "2")
    try:
        assert srv.grpc_port > 0
        for _ in range(4):  # new channels, so connections spread over the workers
            with grpc.insecure_channel(srv.grpc_target) as channel:
                answer = GRPCInferenceServiceStub(channel).ModelInfer(iris_request())
                assert answer.model_name == "iris"
    finally:
        assert srv.stop() == 0


# -- tritonclient, a client nobody here wrote ---------------------------------------------


@pytest.fixture(scope="module")
def triton(server: Server) -> Iterator[object]:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    client = grpcclient.InferenceServerClient(server.grpc_target)
    yield client
    client.close()


def test_tritonclient_stream(triton: object) -> None:
    import queue

    import tritonclient.grpc as grpcclient

    answers: queue.Queue[object] = queue.Queue()
    client = triton
    client.start_stream(callback=lambda result, error: answers.put(error or result))  # type: ignore[attr-defined]
    try:
        x = np.array([IRIS_ROW], dtype=np.float32)
        tensor = grpcclient.InferInput("float_input", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        for i in range(3):
            client.async_stream_infer("iris", [tensor], request_id=str(i))  # type: ignore[attr-defined]
        results = [answers.get(timeout=10) for _ in range(3)]
    finally:
        client.stop_stream()  # type: ignore[attr-defined]
    assert sorted(r.get_response().id for r in results) == ["0", "1", "2"]  # type: ignore[attr-defined]
    assert all(r.as_numpy("output_label").tolist() == [0] for r in results)  # type: ignore[attr-defined]


# -- bad frames, a taken port ---------------------------------------------------------------


def test_garbage_and_malformed_messages_leave_the_server_serving(
    server: Server, stub: GRPCInferenceServiceStub
) -> None:
    with socket.create_connection((server.host, server.grpc_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" + b"\xff" * 100)
        sock.recv(1024)  # whatever grpc answers (an HTTP/2 GOAWAY), then it closes
    with grpc.insecure_channel(server.grpc_target) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            infer(b"\xff\xff\xff")  # not a ModelInferRequest
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith(
            "malformed inference.ModelInferRequest message: Error parsing message"
        )
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        (answer,) = stream(iter([b"\xff\xff\xff"]))
        assert pb.ModelStreamInferResponse.FromString(answer).error_message.startswith(
            "malformed inference.ModelInferRequest message"
        )
    assert stub.ModelInfer(iris_request()).model_name == "iris"


def test_grpc_port_taken_is_one_clear_line(repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [
            sys.executable, "-m", "ligeiro", "serve", str(repository), "--port", "0",
            "--grpc-port", str(port), "--threads", "1",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in done.stderr.decode()


def test_sigterm_lets_an_open_stream_finish(repository: Path) -> None:
    srv = start_server(repository, "--threads", "1")
    requests: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
    try:
        with grpc.insecure_channel(srv.grpc_target) as channel:
            stream = GRPCInferenceServiceStub(channel).ModelStreamInfer(
                iter(requests.get, None), timeout=30
            )
            requests.put(iris_request(id="before"))
            assert next(stream).infer_response.id == "before"
            srv.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while "shutting down" not in srv.output():
                assert time.monotonic() < deadline, srv.output()
                time.sleep(0.02)
            requests.put(iris_request(id="during"))
            assert next(stream).infer_response.id == "during"
            requests.put(None)  # the client ends the stream; the server may then exit
            assert list(stream) == []
        # Wait for the exit the first signal started: stop() would signal again.
        assert srv.process.wait(30) == 0
    finally:
        requests.put(None)
        srv.stop()


def test_sigterm_ends_an_idle_stream_without_waiting_out_the_grace(repository: Path) -> None:
    srv = start_server(repository, "--threads", "1", "--graceful-timeout", "30")
    requests: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
    try:
        with grpc.insecure_channel(srv.grpc_target) as channel:
            stream = GRPCInferenceServiceStub(channel).ModelStreamInfer(
                iter(requests.get, None), timeout=30
            )
            requests.put(iris_request(id="only"))
            assert next(stream).infer_response.id == "only"
            started = time.monotonic()
            srv.process.send_signal(signal.SIGTERM)
            assert list(stream) == []  # ended by the server, with OK, while the client idles
            assert srv.process.wait(30) == 0
            assert time.monotonic() - started < 10  # not the 30 s graceful timeout
    finally:
        requests.put(None)
        srv.stop()


def test_calls_over_the_concurrency_limit_are_refused(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIGEIRO_GRPC__MAX_CONCURRENT_RPCS", "1")
    srv = start_server(repository, "--threads", "1")
    requests: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
    try:
        with grpc.insecure_channel(srv.grpc_target) as channel:
            stub = GRPCInferenceServiceStub(channel)
            stream = stub.ModelStreamInfer(iter(requests.get, None), timeout=30)
            requests.put(iris_request(id="holds the only slot"))
            assert next(stream).infer_response.id == "holds the only slot"
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(iris_request(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            requests.put(None)
            assert list(stream) == []
            assert stub.ModelInfer(iris_request(), timeout=10).model_name == "iris"
    finally:
        requests.put(None)
        assert srv.stop() == 0
