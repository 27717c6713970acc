"""V2 BYTES are bytes: a Python model receives (and may give back) arbitrary bytes.

Triton carries JPEG and WAV as BYTES elements; so does ligeiro. An ONNX string tensor
still takes text only: non-UTF-8 bytes for one are a clear 400 / INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Iterator
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from tests.conftest import Server, start_server
from tests.models import ONNX_TYPES, identity_model, write

ECHO_CONFIG = """
platform = "python"
[[inputs]]
name = "blob"
datatype = "BYTES"
shape = [-1]
[[outputs]]
name = "same"
datatype = "BYTES"
shape = [-1]
[[outputs]]
name = "kind"
datatype = "BYTES"
shape = [-1]
"""
ECHO_MODEL = """
import numpy as np

class Model:
    def __init__(self, folder, parameters):
        pass

    def predict(self, inputs):
        blob = inputs["blob"]
        kind = np.array([type(v).__name__ for v in blob], dtype=object)
        return {"same": blob, "kind": kind}
"""
JPEG_START = b"\xff\xd8\xff"  # not UTF-8


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("bytes")
    (root / "echo" / "1").mkdir(parents=True)
    (root / "echo" / "config.toml").write_text(ECHO_CONFIG)
    (root / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    write(identity_model(), root, "identity")
    srv = start_server(root, "--threads", "1")
    yield srv
    srv.stop()


def _blob(module: object) -> object:
    blob = module.InferInput("blob", [2], "BYTES")  # type: ignore[attr-defined]
    blob.set_data_from_numpy(np.array([JPEG_START, b"text"], dtype=object))
    return blob


def test_bytes_round_trip_over_binary_http(echo_server: Server) -> None:
    client = httpclient.InferenceServerClient(url=f"{echo_server.host}:{echo_server.port}")
    try:
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("same", "kind")]
        result = client.infer("echo", [_blob(httpclient)], outputs=outputs)
    finally:
        client.close()
    assert result.as_numpy("same").tolist() == [JPEG_START, b"text"]
    assert result.as_numpy("kind").tolist() == [b"bytes", b"bytes"]


def test_bytes_round_trip_over_grpc(echo_server: Server) -> None:
    with grpcclient.InferenceServerClient(echo_server.grpc_target) as client:
        result = client.infer("echo", [_blob(grpcclient)])
    assert result.as_numpy("same").tolist() == [JPEG_START, b"text"]
    assert result.as_numpy("kind").tolist() == [b"bytes", b"bytes"]


def test_json_strings_reach_a_python_model_as_utf8_bytes(echo_server: Server) -> None:
    body = {"inputs": [{"name": "blob", "shape": [1], "datatype": "BYTES", "data": ["olá"]}]}
    answer = echo_server.post("/v2/models/echo/infer", body)
    assert answer.status == 200, answer.body
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    assert outputs == {"same": ["olá"], "kind": ["bytes"]}


def test_an_onnx_string_tensor_still_refuses_non_utf8(echo_server: Server) -> None:
    """ONNX Runtime's string tensors hold text: the request is refused, clearly."""
    inputs = []
    for name in ONNX_TYPES:
        tensor = grpcclient.InferInput(f"in_{name}", [1, 1], name)
        dtype = object if name == "BYTES" else triton_to_np_dtype(name)
        tensor.set_data_from_numpy(np.array([[JPEG_START if name == "BYTES" else 0]], dtype))
        inputs.append(tensor)
    with (
        grpcclient.InferenceServerClient(echo_server.grpc_target) as client,
        pytest.raises(InferenceServerException) as caught,
    ):
        client.infer("identity", inputs)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert caught.value.message() == (
        "input 'in_BYTES': BYTES element 0 is not valid UTF-8: invalid start byte at byte 0"
    )
