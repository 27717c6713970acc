"""protobuf ↔ numpy without a server: zero copy, BYTES framing, settings."""

from __future__ import annotations

import numpy as np
import pytest

from ligeiro.errors import InvalidInputError
from ligeiro.protocol.grpc_codec import decode_infer_request, encode_infer_response, pb
from ligeiro.settings import load_settings


def request(datatype: str, shape: list[int], data: bytes) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=shape)
    return pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[data])


def test_raw_input_is_not_copied() -> None:
    message = request("FP32", [2, 2], np.arange(4, dtype="<f4").tobytes())
    array = decode_infer_request(message).inputs["x"]
    assert array.tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert not array.flags.owndata  # a view on the message's bytes
    assert not array.flags.writeable


def test_bytes_round_trip() -> None:
    data = b"\x01\x00\x00\x00a\x00\x00\x00\x00\x03\x00\x00\x00\xc3\xa7b"
    array = decode_infer_request(request("BYTES", [3], data)).inputs["x"]
    assert array.tolist() == ["a", "", "çb"]
    response = encode_infer_response("m", "1", {"y": array}, "id")
    assert response.raw_output_contents[0] == data
    assert (response.outputs[0].datatype, list(response.outputs[0].shape)) == ("BYTES", [3])


def test_bytes_cut_inside_a_length() -> None:
    with pytest.raises(
        InvalidInputError,
        match="BYTES element 1 is cut short: 2 bytes left where a 4-byte length was expected",
    ):
        decode_infer_request(request("BYTES", [2], b"\x01\x00\x00\x00a\x00\x00"))


def test_raw_entries_must_match_inputs() -> None:
    message = request("FP32", [1], b"\0\0\0\0")
    message.raw_input_contents.append(b"")
    with pytest.raises(InvalidInputError, match="raw_input_contents has 2 entries for 1 inputs"):
        decode_infer_request(message)


def test_grpc_settings_default_to_the_http_host() -> None:
    settings = load_settings({"http": {"host": "0.0.0.0"}}, env={})
    assert (settings.grpc_host(), settings.grpc.port) == ("0.0.0.0", 8001)
    assert settings.grpc.max_message_bytes == 64 * 1024 * 1024
    settings = load_settings({}, env={"LIGEIRO_GRPC__HOST": "::1", "LIGEIRO_GRPC__PORT": "9"})
    assert (settings.grpc_host(), settings.grpc.port) == ("::1", 9)
