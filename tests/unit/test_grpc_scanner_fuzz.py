"""Differential fuzzing: ligeiro's ModelInferRequest reader against protobuf's parser,
and its hand-written ModelInferResponse bytes against protobuf's serializer.

``parse_infer_request`` reads the usual request straight from the wire and hands any
other to protobuf; a request that repeats an earlier one's bytes but for its raw contents
is read from that one's kept template. Whatever the bytes, it must end as protobuf's own path does
(``pb.ModelInferRequest.FromString`` then ``decode_infer_request``): the same refusal,
the same error, or the same names, arrays, outputs and id. The messages are written
here at the wire level, so that lengths and varints come in the forms protobuf's
serializer never writes (overlong, over 10 bytes, over 64 bits), fields come in any
order, twice, or unknown; then some are mutated byte by byte.

Answers: any names, version, id and outputs (every datatype, any shape, BYTES with
any text) are written byte for byte as ``SerializeToString`` writes them.

Bounded: a fixed seed, a few seconds (``make fuzz`` runs it long). Cases found
on the way are kept as ``@example``s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ligeiro.errors import InvalidInputError
from ligeiro.protocol.grpc_codec import (
    decode_infer_request,
    encode_infer_response,
    parse_infer_request,
    pb,
)
from tests.fuzz import fuzz
from tests.unit.test_grpc_codec import _protobuf_answer

_DATATYPES = ("FP32", "FP64", "INT64", "INT32", "UINT8", "BOOL", "FP16", "BYTES", "FP99", "")
_ITEMSIZE = {"FP32": 4, "FP64": 8, "INT64": 8, "INT32": 4, "UINT8": 1, "BOOL": 1, "FP16": 2}


def varint(value: int, length: int = 0) -> bytes:
    """``value`` (any size) in ``length`` bytes (at least as many as it needs)."""
    out = bytearray()
    while True:
        out.append(value & 0x7F)
        value >>= 7
        if not value and len(out) >= length:
            break
    for i in range(len(out) - 1):
        out[i] |= 0x80
    return bytes(out)


@st.composite
def varints(draw: st.DrawFn, value: int, odd: bool, one_in: int = 8) -> bytes:
    """``value`` as protobuf writes it; or, when ``odd``, one time in about ``one_in``,
    overlong, over 10 bytes, or with bits above 64 (which protobuf cuts to 64 bits)."""
    form = ""
    if odd and draw(st.integers(1, one_in)) == 1:
        form = draw(st.sampled_from(["overlong", "wide", "too long"]))
    if form == "overlong" and len(varint(value)) < 10:
        return varint(value, draw(st.integers(len(varint(value)) + 1, 10)))
    if form == "wide":
        return varint(value % 2**64 + (draw(st.integers(1, 63) | st.just(63)) << 64), 10)
    if form == "too long":
        return varint(value, 11)
    return varint(value)


@st.composite
def field(draw: st.DrawFn, number: int, payload: bytes, odd: bool) -> bytes:
    """A length-delimited field: its tag, its length (odd forms when ``odd``), its bytes."""
    return bytes([number << 3 | 2]) + draw(varints(len(payload), odd)) + payload


_UTF8 = st.one_of(
    st.sampled_from(["x", "y", "float_input", "m", ""]),
    st.text(max_size=4),
    st.text(min_size=120, max_size=140),  # names whose length takes two varint bytes
).map(str.encode)
# One string in 20 is random bytes, mostly not UTF-8 (protobuf refuses those).
texts = st.integers(0, 19).flatmap(lambda i: st.binary(max_size=4) if i == 0 else _UTF8)


@st.composite
def input_entries(draw: st.DrawFn, odd: bool) -> tuple[bytes, bytes]:
    """An InferInputTensor, and raw bytes that may fill it."""
    datatype = draw(st.sampled_from(_DATATYPES))
    dims = draw(
        st.lists(
            st.integers(0, 4) | st.integers(-(2**63), 2**63 - 1) | st.just(2**62), max_size=3
        )
    )
    parts = [
        draw(field(1, draw(texts), odd)),
        draw(field(2, datatype.encode(), odd)),
        draw(field(3, b"".join([draw(varints(d % 2**64, odd, 2)) for d in dims]), odd)),
    ]
    if draw(st.integers(0, 9)) == 0:  # typed contents, an unpacked shape, a parameter
        parts.append(
            draw(st.sampled_from([b"\x2a\x02\x08\x01", b"\x18\x02", b"\x22\x00", b"\x0a\x00"]))
        )
    order = draw(st.permutations(parts)) if draw(st.booleans()) else parts
    count = int(np.prod([max(d, 0) for d in dims])) if all(0 <= d < 64 for d in dims) else 1
    raw = draw(
        st.just(b"\0" * count * _ITEMSIZE.get(datatype, 1))
        | st.binary(max_size=16)
        | st.just(b"\x01\0\0\0a" * count)
    )
    return b"".join(order), raw


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A ModelInferRequest on the wire, most of them the usual kind the scanner reads
    (half of them with some lengths and shapes in odd varint forms)."""
    odd = draw(st.booleans())
    fields = [draw(field(1, draw(texts), odd))]
    for number in (2, 3):
        if draw(st.booleans()):
            fields.append(draw(field(number, draw(texts), odd)))
    raws = []
    for entry, raw in draw(st.lists(input_entries(odd), max_size=3)):
        fields.append(draw(field(5, entry, odd)))
        raws.append(draw(field(7, raw, odd)))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(field(1, draw(texts), odd))
        extra = draw(st.sampled_from([b""] * 5 + [b"\x12\x00", b"\x0a\x01z"]))
        fields.append(draw(field(6, name + extra, odd)))
    if draw(st.integers(0, 9)) == 0:  # raw entries missing or one too many
        raws = raws[:-1] if raws and draw(st.booleans()) else [*raws, b"\x3a\x00"]
    if draw(st.integers(0, 9)) == 0:  # a field the scanner does not read
        other = [b"\x20\x01", b"\x22\x00", b"\x42\x01a", b"\x0d\0\0\0\0"]
        fields.append(draw(st.sampled_from(other)))
    fields = draw(st.permutations(fields)) if draw(st.integers(0, 4)) == 0 else fields
    return b"".join(fields + raws)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A request with a byte changed, bytes put in, or its end cut off."""
    data = bytearray(draw(requests()))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        if how == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 3))]
        elif how == "cut":
            del data[at:]
    return bytes(data)


def _decoded(read: Any) -> tuple[Any, ...]:
    """What became of a request: refused, an error, or everything it decodes to."""
    try:
        parsed = read()
    except InvalidInputError:
        return ("refused",)
    try:
        decoded = parsed[1]()
    except InvalidInputError as exc:
        return ("error", parsed[0], str(exc))
    inputs = {name: (a.dtype.str, a.shape, a.tolist()) for name, a in decoded.inputs.items()}
    return ("decoded", parsed[0], inputs, decoded.outputs, decoded.id, decoded.timeout_s)


def _by_ligeiro(data: bytes) -> tuple[Any, ...]:
    def read() -> tuple[tuple[str, str, str], Any]:
        parsed = parse_infer_request(data)
        return (parsed.model_name, parsed.model_version, parsed.id), parsed.decode

    return _decoded(read)


def _by_protobuf(data: bytes) -> tuple[Any, ...]:
    def read() -> tuple[tuple[str, str, str], Any]:
        from google.protobuf.message import DecodeError

        try:
            message = pb.ModelInferRequest.FromString(data)
        except DecodeError as exc:
            raise InvalidInputError(str(exc)) from exc
        header = (message.model_name, message.model_version, message.id)
        return header, lambda: decode_infer_request(message)

    return _decoded(read)


# Found by this test (issue 21): a shape varint with bits above 64, which protobuf cuts
# to 64 bits (here -1) and the scanner read as a huge dimension; an outputs entry whose
# name length takes two varint bytes, read as one (a message protobuf refuses).
_WIDE_SHAPE = (
    b"\x0a\x01m\x2a\x15\x0a\x01x\x12\x04FP32\x1a\x0a" + b"\xff" * 9 + b"\x7f" + b"\x3a\x00"
)
_TWO_BYTE_OUTPUT_NAME = b"\x0a\x01m\x32\x82\x01\x0a\x80\x01" + b"a" * 127


@fuzz(400)
@given(requests() | mutated())
@example(_WIDE_SHAPE)
@example(_TWO_BYTE_OUTPUT_NAME)
def test_the_scanner_reads_requests_as_protobuf_does(data: bytes) -> None:
    assert _by_ligeiro(data) == _by_protobuf(data)
    # Again, and with its last bytes changed (raw contents, or not): the first read may
    # have kept the request as the template of its size, which these two then meet.
    changed = data[:-4] + bytes(byte ^ 0x5A for byte in data[-4:])
    for again in (data, changed):
        assert _by_ligeiro(again) == _by_protobuf(again)


def test_the_regression_cases_are_what_they_say() -> None:
    """The kept cases still exercise what they were found with."""
    assert list(pb.ModelInferRequest.FromString(_WIDE_SHAPE).inputs[0].shape) == [-1]
    assert _by_protobuf(_TWO_BYTE_OUTPUT_NAME) == ("refused",)
    usual = pb.ModelInferRequest(
        model_name="m",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1])],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="é" * 100)],
        raw_input_contents=[b"\0\0\0\0"],
    ).SerializeToString()
    decoded = parse_infer_request(usual).decode()
    assert decoded.outputs == ["é" * 100]  # a 200-byte name: two length bytes, read right
    assert decoded.inputs["x"].tolist() == [0.0]


_SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
_NUMERIC = st.sampled_from(["<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "i1", "u1", "<u2",
                            "<u4", "<u8", "?"]).map(np.dtype)  # fmt: skip
arrays = hnp.arrays(_NUMERIC, _SHAPES) | _SHAPES.flatmap(
    lambda shape: st.lists(st.text(max_size=5), min_size=int(np.prod(shape)),
                           max_size=int(np.prod(shape)))
    .map(lambda texts: np.array(texts, dtype=object).reshape(shape))
)  # fmt: skip


@fuzz(150)
@given(
    st.text(max_size=140),
    st.text(max_size=3),
    st.dictionaries(st.text(max_size=140), arrays, max_size=3),
    st.none() | st.text(max_size=140),
)
def test_answers_are_written_as_protobuf_writes_them(
    name: str, version: str, outputs: dict[str, np.ndarray], request_id: str | None
) -> None:
    expected = _protobuf_answer(name, version, outputs, request_id)
    for _ in range(2):  # the second time from the kept pieces
        assert encode_infer_response(name, version, outputs, request_id) == expected
