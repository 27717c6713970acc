"""protobuf ↔ numpy without a server: zero copy, BYTES framing, settings."""

from __future__ import annotations

import numpy as np
import pytest

from ligeiro.errors import InvalidInputError
from ligeiro.protocol.codec import raw_from_array
from ligeiro.protocol.datatypes import datatype_of
from ligeiro.protocol.grpc_codec import (
    decode_infer_request,
    encode_infer_response,
    encode_stream_answer,
    parse_infer_request,
    pb,
)
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
    assert array.tolist() == [b"a", b"", "çb".encode()]
    response = pb.ModelInferResponse.FromString(encode_infer_response("m", "1", {"y": array}, "id"))
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


def _protobuf_answer(
    name: str, version: str, outputs: dict[str, np.ndarray], request_id: str | None
) -> bytes:
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=request_id or "")
    for output, array in outputs.items():
        response.outputs.add(name=output, datatype=datatype_of(array.dtype), shape=array.shape)
        response.raw_output_contents.append(raw_from_array(array))
    serialized: bytes = response.SerializeToString()
    return serialized


@pytest.mark.parametrize(
    ("name", "version", "outputs", "request_id"),
    [
        ("iris", "1", {"label": np.array([0]), "p": np.ones((1, 3), np.float32)}, None),
        ("m", "", {"y": np.array(["a", "", "çb"], dtype=object)}, "id-7"),
        ("é" * 200, "12", {"a" * 300: np.zeros((300, 700), np.float16)}, "x" * 200),
        ("m", "1", {"scalar": np.array(2.5), "empty": np.zeros((0, 3), np.bool_)}, None),
        ("m", "1", {}, None),
    ],
)
def test_answers_are_what_protobuf_writes(
    name: str, version: str, outputs: dict[str, np.ndarray], request_id: str | None
) -> None:
    for _ in range(2):  # the second time from the kept output entries
        answer = encode_infer_response(name, version, outputs, request_id)
        assert answer == _protobuf_answer(name, version, outputs, request_id)
    stream = pb.ModelStreamInferResponse.FromString(encode_stream_answer(answer))
    assert stream.infer_response.SerializeToString() == answer


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tolist() == b[k].tolist()
        for k in a
    )


def _tensor(name: str, datatype: str, shape: list[int]) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


@pytest.mark.parametrize(
    "message",
    [
        # read from the wire, without protobuf's objects
        request("FP32", [1, 4], np.arange(4, dtype="<f4").tobytes()),
        pb.ModelInferRequest(
            model_name="m" * 200,
            model_version="3",
            id="é",
            inputs=[_tensor("a", "INT64", [2]), _tensor("b" * 150, "BYTES", [1, 1])],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="y")],
            raw_input_contents=[np.arange(2).tobytes(), b"\x02\x00\x00\x00hi"],
        ),
        pb.ModelInferRequest(
            model_name="m",
            inputs=[_tensor("x", "FP64", [300, 2])],
            raw_input_contents=[np.zeros(600).tobytes()],
        ),
        pb.ModelInferRequest(  # over 64 KiB: viewed in place, not copied out
            model_name="m",
            inputs=[_tensor("x", "FP32", [300, 70])],
            raw_input_contents=[np.arange(21_000, dtype="<f4").tobytes()],
        ),
        # and through protobuf: parameters, typed contents, a parameter on an output
        pb.ModelInferRequest(
            model_name="m",
            parameters={"timeout": pb.InferParameter(int64_param=5)},
            inputs=[_tensor("x", "FP32", [1])],
            raw_input_contents=[b"\0\0\0\0"],
        ),
        pb.ModelInferRequest(
            model_name="m",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="x",
                    datatype="INT32",
                    shape=[2],
                    contents=pb.InferTensorContents(int_contents=[1, 2]),
                )
            ],
        ),
        pb.ModelInferRequest(
            model_name="m",
            outputs=[
                pb.ModelInferRequest.InferRequestedOutputTensor(
                    name="y", parameters={"binary_data": pb.InferParameter(bool_param=True)}
                )
            ],
        ),
    ],
)
def test_parsed_requests_decode_as_protobuf_reads_them(message: pb.ModelInferRequest) -> None:
    parsed = parse_infer_request(message.SerializeToString())
    expected = decode_infer_request(message)
    assert (parsed.model_name, parsed.model_version, parsed.id) == (
        message.model_name,
        message.model_version,
        message.id,
    )
    decoded = parsed.decode()
    assert _same(decoded.inputs, expected.inputs)
    assert (decoded.outputs, decoded.id, decoded.timeout_s) == (
        expected.outputs,
        expected.id,
        expected.timeout_s,
    )


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (request("FP32", [1, 4], b"\0" * 12), "shape \\[1, 4\\] holds 4 elements"),
        (request("FP99", [1], b"\0" * 4), "unknown datatype 'FP99'"),
        (request("FP32", [-1], b""), "shape \\[-1\\] has a negative dimension"),
        (
            pb.ModelInferRequest(
                model_name="m",
                inputs=[_tensor("x", "FP32", [1])] * 2,
                raw_input_contents=[b"\0" * 4] * 2,
            ),
            "input 'x' appears twice",
        ),
        (pb.ModelInferRequest(model_name="m", inputs=[_tensor("x", "FP32", [1])]), "no data"),
    ],
)
def test_parsed_requests_fail_as_protobuf_reads_them(
    message: pb.ModelInferRequest, error: str
) -> None:
    with pytest.raises(InvalidInputError, match=error):
        decode_infer_request(message)
    with pytest.raises(InvalidInputError, match=error):
        parse_infer_request(message.SerializeToString()).decode()


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x05ab", b"\x0a\xff", b"\x2a\x03\x0a\x05a", b"\xff\xff\xff", b"\x0a\x02\xff\xfe"],
)
def test_bytes_that_are_no_request_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidInputError, match=r"malformed inference\.ModelInferRequest message"):
        parse_infer_request(data)


def test_raw_bytes_are_little_endian_in_c_order() -> None:
    array = np.arange(6, dtype="<i4").reshape(2, 3)
    expected = array.tobytes()
    assert raw_from_array(array) == expected
    assert raw_from_array(np.asfortranarray(array)) == expected
    assert raw_from_array(array.astype(">i4")) == expected
    assert raw_from_array(array.T.T[:, ::1]) == expected
    assert raw_from_array(np.arange(12, dtype="<i4").reshape(2, 6)[:, ::2]) == (
        np.array([[0, 2, 4], [6, 8, 10]], dtype="<i4").tobytes()
    )


def test_the_encoded_pieces_kept_for_answers_are_bounded() -> None:
    # Each batch size is a new output shape: the kept entries start again past 1,024.
    from ligeiro.protocol import grpc_codec

    for rows in range(1, 3000):
        answer = encode_infer_response("m", "1", {"y": np.zeros((rows, 1), np.float32)}, None)
        assert pb.ModelInferResponse.FromString(answer).outputs[0].shape == [rows, 1]
    assert len(grpc_codec._OUTPUT_ENTRIES) <= 1024
    assert len(grpc_codec._HEADS) <= 1024


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "error"),
    [
        ("FP32", [1, 4], b"\0" * 12, "shape \\[1, 4\\] holds 4 elements"),
        ("FP32", [1, 4], b"\0" * 17, "17 bytes of raw_input_contents are not a whole number"),
        ("BOOL", [2], b"\x00\x02", "BOOL bytes must be 0 or 1"),
        ("FP99", [1], b"\0" * 4, "unknown datatype 'FP99'"),
    ],
)
def test_inputs_described_as_before_are_checked_as_before(
    datatype: str, shape: list[int], raw: bytes, error: str
) -> None:
    # The second request finds its input's description kept by the first: a good one
    # decodes the same, bad bytes are refused in the same words.
    itemsize = 1 if datatype == "BOOL" else 4
    good = request(datatype, shape, b"\x01" * (itemsize * int(np.prod(shape))))
    bad = request(datatype, shape, raw)
    for _ in range(2):
        if datatype != "FP99":
            decoded = parse_infer_request(good.SerializeToString()).decode()
            assert _same(decoded.inputs, decode_infer_request(good).inputs)
        with pytest.raises(InvalidInputError, match=error):
            parse_infer_request(bad.SerializeToString()).decode()


def test_the_input_descriptions_kept_are_bounded() -> None:
    # Each batch size is a new input description: the kept ones start again past 1,024.
    from ligeiro.protocol import grpc_scan

    for rows in range(1, 3000):
        message = request("FP32", [rows, 1], b"\0" * 4 * rows)
        decoded = parse_infer_request(message.SerializeToString()).decode()
        assert next(iter(decoded.inputs.values())).shape == (rows, 1)
    assert 0 < len(grpc_scan._KEPT) <= 1024


def test_a_request_like_the_last_of_its_size_has_only_its_raw_contents_read() -> None:
    # The second and third requests repeat the first's bytes but for the raw contents
    # (the kept template); the fourth is as long with another model name, scanned in full.
    from ligeiro.protocol import grpc_scan

    grpc_scan._TEMPLATES.clear()  # none of another test's requests
    first = np.arange(4, dtype="<f4").reshape(1, 4)
    for model, values in (("m", first), ("m", first + 10), ("m", first * 0), ("n", first)):
        message = request("FP32", [1, 4], values.tobytes())
        message.model_name = model
        message.outputs.add(name="y")
        data = message.SerializeToString()
        parsed = parse_infer_request(data)
        # The first request's bytes before its 18 of raw contents: the size's template.
        prefix = grpc_scan._TEMPLATES[len(data)][0]
        assert prefix == data[:-18] if model == "m" else prefix != data[:-18]
        decoded = parsed.decode()
        assert parsed.model_name == model
        assert decoded.inputs["x"].tolist() == values.tolist()
        assert decoded.outputs == ["y"]


def test_the_request_templates_kept_are_bounded() -> None:
    from ligeiro.protocol import grpc_scan

    for rows in range(1, 3000):  # each a new size
        message = request("INT32", [rows], np.arange(rows, dtype="<i4").tobytes())
        decoded = parse_infer_request(message.SerializeToString()).decode()
        assert decoded.inputs["x"].tolist() == list(range(rows))
    assert 0 < len(grpc_scan._TEMPLATES) <= 1024
