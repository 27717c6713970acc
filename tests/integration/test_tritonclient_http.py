"""The real ``tritonclient[http]`` (from PyPI, written by NVIDIA, not us) driving ligeiro.

If Triton's own client works unchanged, so do the clients people already have.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from tests.conftest import Server
from tests.integration.test_v2_rest import EXAMPLES

ARRAYS = {dt: np.array(data, dtype=triton_to_np_dtype(dt)) for dt, data in EXAMPLES.items()}
IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
BINARY = pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])


def _client(srv: Server) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=f"{srv.host}:{srv.port}", network_timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="module")
def triton(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    """tritonclient on the example repository."""
    yield from _client(server)


@pytest.fixture(scope="module")
def triton_identity(identity_server: Server) -> Iterator[httpclient.InferenceServerClient]:
    """tritonclient on the identity model."""
    yield from _client(identity_server)


def iris_input(rows: np.ndarray = IRIS_ROWS, *, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("float_input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return tensor


def test_health(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()


def test_model_ready(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_model_ready("iris")
    assert triton.is_model_ready("iris", "1")
    assert not triton.is_model_ready("iris", "9")
    assert not triton.is_model_ready("nope")


def test_server_metadata(triton: httpclient.InferenceServerClient) -> None:
    meta = triton.get_server_metadata()
    assert meta["name"] == "ligeiro"
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("version", ["", "1"])
def test_model_metadata(triton: httpclient.InferenceServerClient, version: str) -> None:
    meta = triton.get_model_metadata("iris", version)
    assert meta["name"] == "iris"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["output_label", "output_probability"]


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
def test_infer_iris(
    triton: httpclient.InferenceServerClient, binary_in: bool, binary_out: bool
) -> None:
    result = triton.infer(
        "iris",
        [iris_input(binary=binary_in)],
        outputs=[
            httpclient.InferRequestedOutput("output_label", binary_data=binary_out),
            httpclient.InferRequestedOutput("output_probability", binary_data=binary_out),
        ],
    )
    labels = result.as_numpy("output_label")
    proba = result.as_numpy("output_probability")
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, 2]
    assert proba.dtype == np.float32
    assert proba.shape == (2, 3)
    assert proba.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    for output in result.get_response()["outputs"]:
        assert ("data" in output) is not binary_out
        assert ("parameters" in output) is binary_out


def test_infer_without_outputs_gets_every_output_binary(
    triton: httpclient.InferenceServerClient,
) -> None:
    # With no outputs named, tritonclient asks for binary_data_output.
    result = triton.infer("iris", [iris_input()], model_version="1")
    assert result.as_numpy("output_label").tolist() == [0, 2]
    assert [o["parameters"] for o in result.get_response()["outputs"]] == [
        {"binary_data_size": 16},
        {"binary_data_size": 24},
    ]


@BINARY
def test_output_selection(triton: httpclient.InferenceServerClient, binary: bool) -> None:
    result = triton.infer(
        "iris",
        [iris_input(binary=binary)],
        outputs=[httpclient.InferRequestedOutput("output_probability", binary_data=binary)],
    )
    assert result.as_numpy("output_label") is None
    assert result.as_numpy("output_probability").shape == (2, 3)


def test_request_id_is_echoed(triton: httpclient.InferenceServerClient) -> None:
    result = triton.infer("iris", [iris_input()], request_id="req-42")
    assert result.get_response()["id"] == "req-42"
    assert result.get_response()["model_name"] == "iris"
    assert result.get_response()["model_version"] == "1"


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
def test_every_datatype(
    triton_identity: httpclient.InferenceServerClient, binary_in: bool, binary_out: bool
) -> None:
    inputs = []
    for dt, array in ARRAYS.items():
        tensor = httpclient.InferInput(f"in_{dt}", list(array.shape), dt)
        tensor.set_data_from_numpy(array, binary_data=binary_in)
        inputs.append(tensor)
    outputs = [
        httpclient.InferRequestedOutput(f"out_{dt}", binary_data=binary_out) for dt in ARRAYS
    ]
    result = triton_identity.infer("identity", inputs, outputs=outputs)
    for dt, expected in ARRAYS.items():
        got = result.as_numpy(f"out_{dt}")
        assert got.shape == expected.shape, dt
        if dt == "BYTES":  # binary BYTES come back as bytes, JSON ones as str
            got = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v)(got)
        else:
            assert got.dtype == expected.dtype, dt
        assert got.tolist() == expected.tolist(), dt


def test_mixed_binary_and_json_inputs(triton_identity: httpclient.InferenceServerClient) -> None:
    inputs = []
    for i, (dt, array) in enumerate(ARRAYS.items()):
        tensor = httpclient.InferInput(f"in_{dt}", list(array.shape), dt)
        tensor.set_data_from_numpy(array, binary_data=i % 2 == 1)
        inputs.append(tensor)
    result = triton_identity.infer("identity", inputs)
    assert result.as_numpy("out_FP16").tolist() == ARRAYS["FP16"].tolist()
    assert result.as_numpy("out_UINT64").tolist() == ARRAYS["UINT64"].tolist()
    assert result.as_numpy("out_BYTES").tolist() == [
        [v.encode() for v in row] for row in ARRAYS["BYTES"].tolist()
    ]


@BINARY
@pytest.mark.parametrize(
    ("make_input", "message", "status"),
    [
        (
            lambda b: iris_input(IRIS_ROWS[:, :3].copy(), binary=b),
            "model 'iris' input 'float_input': expected shape [-1, 4], got [2, 3]",
            "400",
        ),
        (
            lambda b: httpclient.InferInput("float_input", [2, 4], "FP64").set_data_from_numpy(
                IRIS_ROWS.astype(np.float64), binary_data=b
            ),
            "model 'iris' input 'float_input': expected dtype float32, got float64",
            "400",
        ),
        (
            lambda b: httpclient.InferInput("petals", [2, 4], "FP32").set_data_from_numpy(
                IRIS_ROWS, binary_data=b
            ),
            "model 'iris': unknown input 'petals', missing input 'float_input'; "
            "it takes float_input",
            "400",
        ),
    ],
    ids=["shape", "dtype", "name"],
)
def test_errors_surface_with_our_message(
    triton: httpclient.InferenceServerClient,
    binary: bool,
    make_input: object,
    message: str,
    status: str,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        triton.infer("iris", [make_input(binary)])  # type: ignore[operator]
    assert caught.value.message() == message
    assert caught.value.status() == status


def test_unknown_output(triton: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match=r"\[400\] model 'iris': unknown output"):
        triton.infer("iris", [iris_input()], outputs=[httpclient.InferRequestedOutput("nope")])


def test_unknown_model_and_version(triton: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        triton.infer("nope", [iris_input()])
    assert caught.value.status() == "404"
    assert caught.value.message() == "unknown model 'nope'; the repository has iris"
    with pytest.raises(
        InferenceServerException, match=r"\[404\] model 'iris' has no version '9'; versions: 1"
    ):
        triton.get_model_metadata("iris", "9")


def test_classification_is_refused(triton: httpclient.InferenceServerClient) -> None:
    with pytest.raises(
        InferenceServerException,
        match="output 'output_probability': the classification extension is not supported",
    ):
        triton.infer(
            "iris",
            [iris_input()],
            outputs=[httpclient.InferRequestedOutput("output_probability", class_count=2)],
        )
