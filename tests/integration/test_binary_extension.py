"""Triton's binary tensor data extension over a real socket, with bodies built by hand.

The layout (Triton's ``binary_tensor_data``): ``Inference-Header-Content-Length: N`` says
the first N body bytes are the JSON header; the tensors whose ``binary_data_size`` is set
follow in input order, little-endian, BYTES elements as a 4-byte length then the bytes.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import numpy as np
import pytest

from ligeiro.protocol.datatypes import DATATYPES
from tests.conftest import IRIS_REQUEST, Response, Server
from tests.integration.test_v2_rest import EXAMPLES, read_responses

ARRAYS = {dt: np.array(data, dtype=DATATYPES[dt]) for dt, data in EXAMPLES.items()}
IRIS_ROW = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)


def raw_tensor(array: np.ndarray) -> bytes:
    """A tensor's bytes as the extension sends them."""
    if array.dtype.kind == "O":
        items = [v.encode() if isinstance(v, str) else v for v in array.ravel()]
        return b"".join(struct.pack("<I", len(v)) + v for v in items)
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def tensor(
    name: str, datatype: str, array: np.ndarray, *, binary: bool
) -> tuple[dict[str, Any], bytes]:
    """One input's JSON and the bytes it adds after the header."""
    head: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if not binary:
        head["data"] = array.ravel().tolist()
        return head, b""
    raw = raw_tensor(array)
    head["parameters"] = {"binary_data_size": len(raw)}
    return head, raw


def binary_body(
    inputs: list[tuple[dict[str, Any], bytes]], **extra: Any
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a request: its JSON header, then the binary tensors."""
    header = json.dumps({"inputs": [head for head, _ in inputs], **extra}).encode()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return header + b"".join(raw for _, raw in inputs), headers


def decode_answer(answer: Response) -> dict[str, np.ndarray]:
    """Every output of an answer as numpy, from its JSON ``data`` or its binary bytes."""
    assert answer.status == 200, answer.body
    size = int(answer.headers.get("inference-header-content-length", len(answer.body)))
    body = json.loads(answer.body[:size])
    offset, arrays = size, {}
    for out in body["outputs"]:
        dtype = DATATYPES[out["datatype"]]
        params = out.get("parameters") or {}
        if "binary_data_size" not in params:
            arrays[out["name"]] = np.array(out["data"], dtype=dtype).reshape(out["shape"])
            continue
        assert "data" not in out
        raw = answer.body[offset : offset + params["binary_data_size"]]
        offset += params["binary_data_size"]
        if out["datatype"] == "BYTES":
            items, i = [], 0
            while i < len(raw):
                (n,) = struct.unpack_from("<I", raw, i)
                items.append(raw[i + 4 : i + 4 + n].decode())
                i += 4 + n
            array = np.array(items, dtype=object)
        else:
            array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
        arrays[out["name"]] = array.reshape(out["shape"])
    assert offset == len(answer.body), "binary outputs do not fill the body exactly"
    return arrays


def infer(srv: Server, model: str, body: bytes, headers: dict[str, str]) -> Response:
    return srv.request("POST", f"/v2/models/{model}/infer", body, headers)


def test_server_metadata_advertises_the_extension(server: Server) -> None:
    assert "binary_tensor_data" in server.get("/v2").json()["extensions"]


def test_every_datatype_binary_in_binary_out(identity_server: Server) -> None:
    body, headers = binary_body(
        [tensor(f"in_{dt}", dt, a, binary=True) for dt, a in ARRAYS.items()],
        parameters={"binary_data_output": True},
    )
    answer = infer(identity_server, "identity", body, headers)
    assert answer.headers["content-type"] == "application/octet-stream"
    outputs = decode_answer(answer)
    assert set(outputs) == {f"out_{dt}" for dt in ARRAYS}
    for dt, expected in ARRAYS.items():
        got = outputs[f"out_{dt}"]
        assert got.shape == expected.shape, dt
        assert got.tolist() == expected.tolist(), dt


def test_binary_inputs_json_answer(identity_server: Server) -> None:
    body, headers = binary_body(
        [tensor(f"in_{dt}", dt, a, binary=True) for dt, a in ARRAYS.items()]
    )
    answer = infer(identity_server, "identity", body, headers)
    assert answer.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in answer.headers
    outputs = decode_answer(answer)
    for dt, expected in ARRAYS.items():
        assert outputs[f"out_{dt}"].tolist() == expected.tolist(), dt


def test_binary_and_json_inputs_interleaved(identity_server: Server) -> None:
    inputs = [
        tensor(f"in_{dt}", dt, a, binary=i % 2 == 0) for i, (dt, a) in enumerate(ARRAYS.items())
    ]
    body, headers = binary_body(inputs, parameters={"binary_data_output": True})
    outputs = decode_answer(infer(identity_server, "identity", body, headers))
    for dt, expected in ARRAYS.items():
        assert outputs[f"out_{dt}"].tolist() == expected.tolist(), dt


def test_per_output_binary_data_overrides_the_request(identity_server: Server) -> None:
    body, headers = binary_body(
        [tensor(f"in_{dt}", dt, a, binary=False) for dt, a in ARRAYS.items()],
        parameters={"binary_data_output": True},
        outputs=[
            {"name": "out_FP16", "parameters": {"binary_data": True}},
            {"name": "out_INT8", "parameters": {"binary_data": False}},
            {"name": "out_BYTES"},  # the request-level default: binary
        ],
    )
    answer = infer(identity_server, "identity", body, headers)
    size = int(answer.headers["inference-header-content-length"])
    described = {o["name"]: o for o in json.loads(answer.body[:size])["outputs"]}
    assert list(described) == ["out_FP16", "out_INT8", "out_BYTES"]
    assert described["out_INT8"]["data"] == [-128, 127, 0, 1]
    assert described["out_FP16"]["parameters"] == {"binary_data_size": 8}
    outputs = decode_answer(answer)
    assert outputs["out_FP16"].tolist() == ARRAYS["FP16"].tolist()
    assert outputs["out_BYTES"].tolist() == ARRAYS["BYTES"].tolist()


def test_json_request_asks_for_one_binary_output(server: Server) -> None:
    request = {
        **IRIS_REQUEST,
        "outputs": [{"name": "output_probability", "parameters": {"binary_data": True}}],
    }
    answer = server.post("/v2/models/iris/infer", request)
    assert answer.headers["content-type"] == "application/octet-stream"
    proba = decode_answer(answer)["output_probability"]
    assert proba.dtype == np.float32
    assert proba.shape == (1, 3)
    assert proba[0, 0] > 0.99


def test_no_binary_output_asked_is_plain_json(server: Server) -> None:
    request = {
        **IRIS_REQUEST,
        "outputs": [{"name": "output_label", "parameters": {"binary_data": False}}],
    }
    answer = server.post("/v2/models/iris/infer", request)
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["outputs"] == [
        {"name": "output_label", "datatype": "INT64", "shape": [1], "data": [0]}
    ]


@pytest.mark.parametrize("pad", range(4))
def test_binary_input_at_any_alignment(server: Server, pad: int) -> None:
    # The JSON header's length puts the FP32 bytes at every offset modulo 4.
    body, headers = binary_body(
        [tensor("float_input", "FP32", np.repeat(IRIS_ROW, 3, axis=0), binary=True)],
        id="x" * pad,
    )
    outputs = decode_answer(infer(server, "iris", body, headers))
    assert outputs["output_label"].tolist() == [0, 0, 0]


def test_bytes_edge_cases(identity_server: Server) -> None:
    strings = np.array([["", "a\x00b"], ["olá 🌍", "x" * 1000]], dtype=object)
    others = [tensor(f"in_{dt}", dt, a, binary=True) for dt, a in ARRAYS.items() if dt != "BYTES"]
    body, headers = binary_body(
        [*others, tensor("in_BYTES", "BYTES", strings, binary=True)],
        outputs=[{"name": "out_BYTES", "parameters": {"binary_data": True}}],
    )
    outputs = decode_answer(infer(identity_server, "identity", body, headers))
    assert outputs["out_BYTES"].tolist() == strings.tolist()


def test_empty_tensors(identity_server: Server) -> None:
    body, headers = binary_body(
        [tensor(f"in_{dt}", dt, a[:0], binary=True) for dt, a in ARRAYS.items()],
        parameters={"binary_data_output": True},
    )
    answer = infer(identity_server, "identity", body, headers)
    assert int(answer.headers["inference-header-content-length"]) == len(answer.body)
    outputs = decode_answer(answer)
    assert {name: a.shape for name, a in outputs.items()} == {f"out_{dt}": (0, 2) for dt in ARRAYS}


def test_binary_then_json_on_one_connection(server: Server) -> None:
    # The header belongs to one request: the JSON request after it must not inherit it.
    body, headers = binary_body([tensor("float_input", "FP32", IRIS_ROW, binary=True)])
    binary = (
        b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n"
        b"inference-header-content-length: %s\r\n\r\n%s"
        % (len(body), headers["inference-header-content-length"].encode(), body)
    )
    plain = json.dumps(IRIS_REQUEST).encode()
    request = b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (
        len(plain),
        plain,
    )
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(binary + request + binary)
        answers = read_responses(sock, 3)
    assert [status for status, _ in answers] == [200, 200, 200]
    assert answers[0][1] == answers[1][1] == answers[2][1]


def test_predict_refuses_binary_data(server: Server) -> None:
    answer = server.request(
        "POST",
        "/v1/models/iris:predict",
        b'{"instances": []}',
        {"inference-header-content-length": "5"},
    )
    assert answer.status == 400
    assert "binary tensor data is for POST /v2/models/{model}/infer" in answer.json()["error"]


# -- errors -------------------------------------------------------------------------

FP32_HEAD = {"name": "float_input", "datatype": "FP32", "shape": [1, 4]}
ROW = IRIS_ROW.tobytes()


def _iris(head: dict[str, Any], raw: bytes, **extra: Any) -> tuple[bytes, dict[str, str]]:
    return binary_body([({**FP32_HEAD, **head}, raw)], **extra)


def _with_header(value: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, {"inference-header-content-length": value}


IRIS_ERRORS = {
    "header past the body": (
        _with_header("999", b"{}"),
        "Inference-Header-Content-Length is 999 but the body has only 2 bytes",
    ),
    "header not a number": (
        _with_header("12abc", b"{}"),
        "Inference-Header-Content-Length must be a non-negative integer, got '12abc'",
    ),
    "header negative": (
        _with_header("-1", b"{}"),
        "Inference-Header-Content-Length must be a non-negative integer, got '-1'",
    ),
    "header cuts the JSON": (
        (json.dumps(IRIS_REQUEST).encode(), {"inference-header-content-length": "10"}),
        "invalid inference request: ",
    ),
    "size runs past the end": (
        _iris({"parameters": {"binary_data_size": 32}}, ROW),
        "input 'float_input': binary_data_size 32 runs past the end of the body: "
        "16 of the 16 bytes after the JSON header are left",
    ),
    "bytes left over": (
        _iris({"parameters": {"binary_data_size": 16}}, ROW + b"\0\0"),
        "18 bytes follow the JSON header but the inputs' binary_data_size add up to 16",
    ),
    "json input and trailing bytes": (
        _iris({"data": IRIS_ROW.ravel().tolist()}, ROW),
        "16 bytes follow the JSON header but the inputs' binary_data_size add up to 0",
    ),
    "not a whole element": (
        _iris({"parameters": {"binary_data_size": 14}}, ROW[:14]),
        "input 'float_input': 14 bytes of binary data are not a whole number of FP32 "
        "elements (4 bytes each)",
    ),
    "count does not match shape": (
        _iris({"parameters": {"binary_data_size": 12}}, ROW[:12]),
        "input 'float_input': shape [1, 4] holds 4 elements, binary data has 3",
    ),
    "size without the header": (
        (
            json.dumps(
                {"inputs": [{**FP32_HEAD, "parameters": {"binary_data_size": 16}}]}
            ).encode(),
            {},
        ),
        "input 'float_input': binary_data_size 16 but no binary data "
        "(the Inference-Header-Content-Length header is missing)",
    ),
    "data and size": (
        _iris({"data": [1, 2, 3, 4], "parameters": {"binary_data_size": 16}}, ROW),
        "input 'float_input': has both JSON 'data' and binary_data_size; send one",
    ),
    "size not an integer": (
        _iris({"parameters": {"binary_data_size": "16"}}, ROW),
        "input 'float_input': binary_data_size must be a non-negative integer, got '16'",
    ),
    "size negative": (
        _iris({"parameters": {"binary_data_size": -16}}, ROW),
        "input 'float_input': binary_data_size must be a non-negative integer, got -16",
    ),
    "binary_data_output not a boolean": (
        _iris({"parameters": {"binary_data_size": 16}}, ROW, parameters={"binary_data_output": 1}),
        "parameter binary_data_output must be true/false, got 1",
    ),
    "binary_data not a boolean": (
        _iris(
            {"parameters": {"binary_data_size": 16}},
            ROW,
            outputs=[{"name": "output_label", "parameters": {"binary_data": "yes"}}],
        ),
        "output 'output_label': binary_data must be true/false, got 'yes'",
    ),
    "classification": (
        _iris(
            {"parameters": {"binary_data_size": 16}},
            ROW,
            outputs=[{"name": "output_probability", "parameters": {"classification": 2}}],
        ),
        "output 'output_probability': the classification extension is not supported",
    ),
    "wrong dtype in binary": (
        binary_body([tensor("float_input", "FP64", IRIS_ROW.astype(np.float64), binary=True)]),
        "model 'iris' input 'float_input': expected dtype float32, got float64",
    ),
}


@pytest.mark.parametrize("case", list(IRIS_ERRORS))
def test_errors(server: Server, case: str) -> None:
    (body, headers), message = IRIS_ERRORS[case]
    answer = infer(server, "iris", body, headers)
    assert answer.status == 400, answer.body
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error.startswith(message) if case == "header cuts the JSON" else error == message
    assert server.post("/v2/models/iris/infer", IRIS_REQUEST).status == 200  # still serving


def _identity_request(datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, dict[str, str]]:
    """Every identity input in binary, with ``raw`` as the bytes of ``in_<datatype>``."""
    head = {"name": f"in_{datatype}", "datatype": datatype, "shape": shape}
    return binary_body(
        [
            ({**head, "parameters": {"binary_data_size": len(raw)}}, raw)
            if dt == datatype
            else tensor(f"in_{dt}", dt, a, binary=True)
            for dt, a in ARRAYS.items()
        ]
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            _identity_request("BYTES", [1, 1], b"\x05\0\0\0abc"),
            "input 'in_BYTES': BYTES element 0 says 5 bytes, only 3 are left",
        ),
        (
            _identity_request("BYTES", [1, 1], b"\x01\0\0\0a\x01\0"),
            "input 'in_BYTES': BYTES element 1 is cut short: 2 bytes left where a 4-byte "
            "length was expected",
        ),
        (
            _identity_request("BYTES", [1, 1], b"\x02\0\0\0\xff\xfe"),
            "input 'in_BYTES': BYTES element 0 is not valid UTF-8: invalid start byte at byte 0",
        ),
        (
            _identity_request("BYTES", [1, 1], b"\x01\0\0\0a\x01\0\0\0b"),
            "input 'in_BYTES': shape [1, 1] holds 1 elements, binary data has 2",
        ),
        (
            _identity_request("BOOL", [1, 1], b"\x02"),
            "input 'in_BOOL': BOOL bytes must be 0 or 1, got 2",
        ),
        (
            _identity_request("INT64", [2, 2], b"\0" * 16),
            "input 'in_INT64': shape [2, 2] holds 4 elements, binary data has 2",
        ),
        (
            _identity_request("FP16", [2, 2], b"\0" * 7),
            "input 'in_FP16': 7 bytes of binary data are not a whole number of FP16 "
            "elements (2 bytes each)",
        ),
    ],
    ids=["overrun", "cut-length", "utf8", "count", "bool", "int64-count", "fp16-size"],
)
def test_bad_binary_elements(
    identity_server: Server, request_: tuple[bytes, dict[str, str]], message: str
) -> None:
    body, headers = request_
    answer = infer(identity_server, "identity", body, headers)
    assert answer.status == 400, answer.body
    assert answer.json()["error"] == message
