"""V2 conformance, written once and run over both transports with the real ``tritonclient``.

Each test takes a ``client``: NVIDIA's ``tritonclient.http`` or ``tritonclient.grpc``
``InferenceServerClient`` (from PyPI, not written here), which share one API. If Triton's
own clients work unchanged on both transports, so do the clients people already have.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from tests.conftest import EXAMPLE_NAMES, Server
from tests.integration.test_v2_rest import EXAMPLES

Client = httpclient.InferenceServerClient | grpcclient.InferenceServerClient

ARRAYS = {dt: np.array(data, dtype=triton_to_np_dtype(dt)) for dt, data in EXAMPLES.items()}
IRIS_ROWS = np.array(
    [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32
)
# (binary input, binary output) pairs: HTTP has JSON and binary tensors, gRPC is always raw.
ENCODINGS = {
    "http": [(True, True), (True, False), (False, True), (False, False)],
    "grpc": [(True, True)],
}
# The status each transport gives for our error classes.
STATUS = {
    "http": {"invalid": "400", "not found": "404"},
    "grpc": {"invalid": "StatusCode.INVALID_ARGUMENT", "not found": "StatusCode.NOT_FOUND"},
}


@pytest.fixture(scope="module", params=["http", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def connect(transport: str, srv: Server) -> Iterator[Client]:
    client: Client
    if transport == "http":
        client = httpclient.InferenceServerClient(f"{srv.host}:{srv.port}", network_timeout=30)
    else:
        client = grpcclient.InferenceServerClient(srv.grpc_target)
    yield client
    client.close()


@pytest.fixture(scope="module")
def client(transport: str, server: Server) -> Iterator[Client]:
    """tritonclient over ``transport`` on the example repository (iris)."""
    yield from connect(transport, server)


@pytest.fixture(scope="module")
def identity(transport: str, identity_server: Server) -> Iterator[Client]:
    """tritonclient over ``transport`` on the identity model (one input per datatype)."""
    yield from connect(transport, identity_server)


def api(client: Client) -> ModuleType:
    return httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient


def name_of(client: Client) -> str:
    return "http" if api(client) is httpclient else "grpc"


def tensor(
    client: Client, name: str, array: np.ndarray, datatype: str, *, binary: bool = True
) -> Any:
    """``InferInput`` holding ``array``; ``binary`` picks JSON or binary data on HTTP."""
    result = api(client).InferInput(name, list(array.shape), datatype)
    if api(client) is httpclient:
        result.set_data_from_numpy(array, binary_data=binary)
    else:
        result.set_data_from_numpy(array)
    return result


def wanted(client: Client, name: str, *, binary: bool = True) -> Any:
    """``InferRequestedOutput`` for ``name``; ``binary`` picks its encoding on HTTP."""
    if api(client) is httpclient:
        return httpclient.InferRequestedOutput(name, binary_data=binary)
    return grpcclient.InferRequestedOutput(name)


def iris(client: Client, rows: np.ndarray = IRIS_ROWS, *, binary: bool = True) -> Any:
    return tensor(client, "float_input", rows, "FP32", binary=binary)


def response(client: Client, result: Any) -> dict[str, Any]:
    if api(client) is httpclient:
        return result.get_response()  # type: ignore[no-any-return]
    return result.get_response(as_json=True)  # type: ignore[no-any-return]


def model_metadata(client: Client, *args: str) -> dict[str, Any]:
    if api(client) is httpclient:
        return client.get_model_metadata(*args)  # type: ignore[no-any-return]
    meta = client.get_model_metadata(*args, as_json=True)
    for t in meta["inputs"] + meta["outputs"]:  # int64 shapes come back as JSON strings
        t["shape"] = [int(d) for d in t["shape"]]
    return meta  # type: ignore[no-any-return]


def text(array: np.ndarray) -> list[Any]:
    """BYTES elements as str (binary ones come back as bytes, JSON ones as str)."""
    return [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]


# -- health and metadata ---------------------------------------------------------------


def test_health_and_readiness(client: Client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "1")


def test_server_metadata(client: Client) -> None:
    meta = client.get_server_metadata()
    if api(client) is grpcclient:
        meta = {"name": meta.name, "version": meta.version}
    assert meta["name"] == "ligeiro"
    assert meta["version"]


@pytest.mark.parametrize("version", ["", "1"])
def test_model_metadata(client: Client, version: str) -> None:
    expected: dict[str, Any] = {
        "name": "iris",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "output_label", "datatype": "INT64", "shape": [-1]},
            {"name": "output_probability", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    if api(client) is httpclient:  # gRPC's ModelMetadataResponse has no parameters
        expected["parameters"] = {"execution_provider": "CPUExecutionProvider"}
    assert model_metadata(client, "iris", version) == expected


# -- inference ---------------------------------------------------------------------------


def test_infer_iris_batch(client: Client) -> None:
    for binary_in, binary_out in ENCODINGS[name_of(client)]:
        result = client.infer(
            "iris",
            [iris(client, binary=binary_in)],
            outputs=[
                wanted(client, "output_label", binary=binary_out),
                wanted(client, "output_probability", binary=binary_out),
            ],
        )
        labels = result.as_numpy("output_label")
        proba = result.as_numpy("output_probability")
        assert labels.dtype == np.int64
        assert labels.tolist() == [0, 2, 1]
        assert proba.dtype == np.float32
        assert proba.shape == (3, 3)
        assert proba.sum(axis=1) == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
        assert proba[0, 0] > 0.99


def test_infer_every_output_by_default(client: Client) -> None:
    result = client.infer("iris", [iris(client)])
    assert result.as_numpy("output_label").tolist() == [0, 2, 1]
    assert result.as_numpy("output_probability").shape == (3, 3)


def test_output_selection(client: Client) -> None:
    result = client.infer("iris", [iris(client)], outputs=[wanted(client, "output_probability")])
    assert result.as_numpy("output_label") is None
    assert result.as_numpy("output_probability").shape == (3, 3)
    assert [o["name"] for o in response(client, result)["outputs"]] == ["output_probability"]


def test_request_id_model_and_version_are_echoed(client: Client) -> None:
    answer = response(client, client.infer("iris", [iris(client)], request_id="req-42"))
    assert answer["id"] == "req-42"
    assert answer["model_name"] == "iris"
    assert answer["model_version"] == "1"
    assert "id" not in response(client, client.infer("iris", [iris(client)]))


def test_version_selection(client: Client) -> None:
    result = client.infer("iris", [iris(client)], model_version="1")
    assert response(client, result)["model_version"] == "1"
    assert result.as_numpy("output_label").tolist() == [0, 2, 1]


def test_request_parameters_are_accepted(client: Client) -> None:
    result = client.infer("iris", [iris(client)], parameters={"tag": "x", "n": 3, "on": True})
    assert result.as_numpy("output_label").tolist() == [0, 2, 1]


def test_every_datatype_in_one_request(identity: Client) -> None:
    for binary_in, binary_out in ENCODINGS[name_of(identity)]:
        encoding = f"binary in {binary_in}, binary out {binary_out}"
        inputs = [
            tensor(identity, f"in_{dt}", array, dt, binary=binary_in)
            for dt, array in ARRAYS.items()
        ]
        outputs = [wanted(identity, f"out_{dt}", binary=binary_out) for dt in ARRAYS]
        result = identity.infer("identity", inputs, outputs=outputs)
        described = {o["name"]: o["datatype"] for o in response(identity, result)["outputs"]}
        assert described == {f"out_{dt}": dt for dt in ARRAYS}, encoding
        for dt, expected in ARRAYS.items():
            got = result.as_numpy(f"out_{dt}")
            assert got.shape == expected.shape, (dt, encoding)
            if dt == "BYTES":
                assert text(got) == expected.ravel().tolist(), encoding
            else:
                assert got.dtype == expected.dtype, (dt, encoding)
                np.testing.assert_array_equal(got, expected, err_msg=f"{dt}, {encoding}")


def test_several_inputs_with_selected_outputs(identity: Client) -> None:
    inputs = [tensor(identity, f"in_{dt}", array, dt) for dt, array in ARRAYS.items()]
    outputs = [wanted(identity, name) for name in ("out_BYTES", "out_FP16")]
    result = identity.infer("identity", inputs, outputs=outputs)
    assert [o["name"] for o in response(identity, result)["outputs"]] == ["out_BYTES", "out_FP16"]
    assert text(result.as_numpy("out_BYTES")) == ARRAYS["BYTES"].ravel().tolist()
    np.testing.assert_array_equal(result.as_numpy("out_FP16"), ARRAYS["FP16"])
    assert result.as_numpy("out_INT8") is None


# -- errors: the same message on both transports -------------------------------------------


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (
            lambda c: c.infer("nope", [iris(c)]),
            "not found",
            f"unknown model 'nope'; the repository has {EXAMPLE_NAMES}",
        ),
        (
            lambda c: c.infer("iris", [iris(c)], model_version="9"),
            "not found",
            "model 'iris' has no version '9'; versions: 1",
        ),
        (
            lambda c: model_metadata(c, "nope"),
            "not found",
            f"unknown model 'nope'; the repository has {EXAMPLE_NAMES}",
        ),
        (
            lambda c: model_metadata(c, "iris", "9"),
            "not found",
            "model 'iris' has no version '9'; versions: 1",
        ),
        (
            lambda c: c.infer("iris", [iris(c, IRIS_ROWS[:, :3].copy())]),
            "invalid",
            "model 'iris' input 'float_input': expected shape [-1, 4], got [3, 3]",
        ),
        (
            lambda c: c.infer("iris", [iris(c, IRIS_ROWS[0].copy())]),
            "invalid",
            "model 'iris' input 'float_input': expected shape [-1, 4], got [4] "
            "(missing batch axis?)",
        ),
        (
            lambda c: c.infer(
                "iris", [tensor(c, "float_input", IRIS_ROWS.astype(np.float64), "FP64")]
            ),
            "invalid",
            "model 'iris' input 'float_input': expected dtype float32, got float64",
        ),
        (
            lambda c: c.infer("iris", [tensor(c, "petals", IRIS_ROWS, "FP32")]),
            "invalid",
            "model 'iris': unknown input 'petals', missing input 'float_input'; "
            "it takes float_input",
        ),
        (
            lambda c: c.infer("iris", [iris(c)], outputs=[wanted(c, "nope")]),
            "invalid",
            "model 'iris': unknown output 'nope'; it gives output_label, output_probability",
        ),
    ],
    ids=[
        "unknown-model", "unknown-version", "metadata-unknown-model", "metadata-unknown-version",
        "shape", "missing-batch-axis", "datatype", "input-name", "output-name",
    ],
)  # fmt: skip
def test_errors_carry_our_message(client: Client, call: Any, status: str, message: str) -> None:
    with pytest.raises(InferenceServerException, match=re.escape(message)) as caught:
        call(client)
    assert caught.value.message() == message
    assert caught.value.status() == STATUS[name_of(client)][status]
