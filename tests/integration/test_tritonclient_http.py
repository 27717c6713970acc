"""HTTP-only behaviour of the real ``tritonclient[http]``: JSON or binary tensors per output.

What both transports share is in ``test_conformance.py``.
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


def test_unknown_model_is_not_ready(triton: httpclient.InferenceServerClient) -> None:
    # Over gRPC, ModelReady answers NOT_FOUND instead, which tritonclient raises.
    assert not triton.is_model_ready("iris", "9")
    assert not triton.is_model_ready("nope")


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_each_output_is_json_or_binary_as_asked(
    triton: httpclient.InferenceServerClient, binary_out: bool
) -> None:
    result = triton.infer(
        "iris",
        [iris_input()],
        outputs=[
            httpclient.InferRequestedOutput("output_label", binary_data=binary_out),
            httpclient.InferRequestedOutput("output_probability", binary_data=not binary_out),
        ],
    )
    label, proba = result.get_response()["outputs"]
    assert ("data" in label) is not binary_out
    assert ("parameters" in label) is binary_out
    assert ("data" in proba) is binary_out
    assert result.as_numpy("output_label").tolist() == [0, 2]
    assert result.as_numpy("output_probability").shape == (2, 3)


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
