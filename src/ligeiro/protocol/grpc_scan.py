"""The usual ``ModelInferRequest`` read straight from its bytes, without protobuf's objects.

``scan_infer_request`` reads names, datatypes, packed shapes, ``raw_input_contents``
and outputs by name; anything else (typed ``contents``, parameters, another field or
wire type, bytes that do not parse) returns None, and ``grpc_codec.parse_infer_request``
hands the message to protobuf.

A client sends the same model, inputs and outputs call after call, and only the raw
contents change: each input's description is kept by its bytes, and a whole request
whose raw contents come last is kept as the template of its size, so that the next
request repeating its bytes has only its raw contents read (ADR 0009, 2026-12-06).
Both are bounded; what they hold is what scanning the same bytes again would give.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from .raw import fixed_layout

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ScannedInput", "ScannedRequest", "scan_infer_request"]

ScannedInput: TypeAlias = "tuple[str, str, list[int], tuple[np.dtype, int] | None]"
"""An input's name, datatype and shape, and ``raw.fixed_layout`` of the last two. Kept
for the next request that describes its input with the same bytes: read-only."""

ScannedRequest: TypeAlias = tuple[
    str, str, str, list[ScannedInput], list[bytes | memoryview], list[str] | None
]
"""Model name, model version, request id, each input's description, each input's raw
bytes, and the outputs asked for (None: all)."""


# A raw input up to this size is copied out of the message (a new bytes object, aligned
# for any dtype); a larger one is viewed in place, and copied by numpy only when its
# offset in the message leaves it unaligned.
_COPIED_RAW = 64 * 1024
# The tags (field number << 3 | wire type 2) of the fields scan_infer_request reads.
_MODEL_NAME, _MODEL_VERSION, _ID, _INPUTS, _OUTPUTS, _RAW_INPUT = 0x0A, 0x12, 0x1A, 0x2A, 0x32, 0x3A
# Inputs described by the same bytes as an earlier request's (a client sends the same
# name, datatype and shape call after call) are not scanned again: up to _KEPT_INPUTS
# descriptions of up to _LONGEST_KEPT bytes are kept, then they start afresh.
_KEPT: dict[bytes, ScannedInput] = {}
_KEPT_INPUTS = 1024
_LONGEST_KEPT = 256
# A request whose raw contents come last, each of the size its input's fixed layout
# says, is kept as a template under its size: the bytes before its raw contents, each
# raw entry's tag and length as written, and what the rest said. The next request of
# that size that repeats those bytes has only its raw contents read (a client sends the
# same model, inputs and outputs call after call). The first request of a size keeps
# its place: up to _KEPT_TEMPLATES sizes, prefixes up to _LONGEST_PREFIX bytes.
_Template: TypeAlias = tuple[
    bytes, list[tuple[bytes, int]], str, str, str, list[ScannedInput], list[str] | None
]
_TEMPLATES: dict[int, _Template] = {}
_KEPT_TEMPLATES = 1024
_LONGEST_PREFIX = 1024


def scan_infer_request(data: bytes) -> ScannedRequest | None:
    """The usual request, read without protobuf's objects; None for any other.

    Only fields 1, 2, 3 (strings), 5 (inputs with a name, a datatype and a packed
    shape), 6 (outputs with a name) and 7 (one raw entry per input, no input twice)
    are read here; a parameter, typed contents, another field or wire type, or bytes
    that do not parse return None, and protobuf reads the message.
    """
    size = len(data)
    template = _TEMPLATES.get(size)
    if template is not None and data.startswith(template[0]):
        position = len(template[0])
        raw: list[bytes | memoryview] = []
        for head, length in template[1]:
            if not data.startswith(head, position):
                break
            position += len(head)
            raw.append(data[position : position + length])
            position += length
        else:  # the same bytes as the template's but for the raw contents
            _, _, name, version, request_id, tensors, outputs = template
            return name, version, request_id, tensors, raw, outputs
    name = version = request_id = ""
    tensors = []
    outputs = None
    raw = []
    view = None
    position = 0
    raw_start = -1  # where the raw contents start, while nothing else follows them
    try:
        while position < size:
            field_start = position
            tag = data[position]
            length = data[position + 1]
            if length < 0x80:  # a length of one byte (_length_delimited, written out)
                position += 2
                end = position + length
            else:
                tag, position, end = _length_delimited(data, position)
            if end > size:
                return None
            if tag == _RAW_INPUT:
                if not raw:
                    raw_start = field_start
                if end - position <= _COPIED_RAW:
                    raw.append(data[position:end])
                else:
                    if view is None:
                        view = memoryview(data)
                    raw.append(view[position:end])
            elif tag == _INPUTS:
                described = data[position:end]
                tensor = _KEPT.get(described)
                if tensor is None:
                    tensor = _scan_input(data, position, end)
                    if tensor is None:
                        return None
                    if len(described) <= _LONGEST_KEPT:
                        if len(_KEPT) >= _KEPT_INPUTS:
                            _KEPT.clear()
                        _KEPT[described] = tensor
                tensors.append(tensor)
            elif tag == _MODEL_NAME:
                name = data[position:end].decode()
            elif tag == _MODEL_VERSION:
                version = data[position:end].decode()
            elif tag == _ID:
                request_id = data[position:end].decode()
            elif tag == _OUTPUTS:
                # InferRequestedOutputTensor: only its name (field 1) and nothing else.
                if position == end:
                    return None
                field, start, stop = _length_delimited(data, position)
                if field != 0x0A or stop != end:
                    return None
                if outputs is None:
                    outputs = []
                outputs.append(data[start:end].decode())
            else:
                return None
            if tag != _RAW_INPUT:
                raw_start = -1
            position = end
    except (IndexError, UnicodeDecodeError):
        return None
    if len(raw) != len(tensors) or (
        len(tensors) > 1 and len({t[0] for t in tensors}) != len(tensors)
    ):
        return None
    if 0 <= raw_start <= _LONGEST_PREFIX and size not in _TEMPLATES:
        _keep_template(data, raw_start, name, version, request_id, tensors, raw, outputs)
    return name, version, request_id, tensors, raw, outputs


def _keep_template(
    data: bytes,
    raw_start: int,
    name: str,
    version: str,
    request_id: str,
    tensors: list[ScannedInput],
    raw: list[bytes | memoryview],
    outputs: list[str] | None,
) -> None:
    """Keep the request as its size's template, if each raw entry is of its input's
    fixed size (and copied, not viewed): raw contents from ``raw_start`` on."""
    heads = []
    position = raw_start
    for (_, _, _, layout), contents in zip(tensors, raw):
        length = len(contents)
        if layout is None or layout[1] != length or length > _COPIED_RAW:
            return
        _, start, end = _length_delimited(data, position)
        heads.append((data[position:start], length))
        position = end
    if len(_TEMPLATES) >= _KEPT_TEMPLATES:
        _TEMPLATES.clear()
    _TEMPLATES[len(data)] = (data[:raw_start], heads, name, version, request_id, tensors, outputs)


def _scan_input(data: bytes, position: int, end: int) -> ScannedInput | None:
    """An InferInputTensor with only a name, a datatype and a packed shape; else None."""
    name = datatype = ""
    shape: list[int] = []
    while position < end:
        tag, position, stop = _length_delimited(data, position)
        if stop > end:
            return None
        if tag == 0x1A:  # shape, packed
            while position < stop:
                dimension = data[position]
                if dimension < 0x80:
                    position += 1
                else:
                    dimension, position = _read_varint(data, position)
                    if dimension >= 1 << 63:
                        dimension -= 1 << 64
                shape.append(dimension)
            if position != stop:
                return None
        elif tag == 0x0A:
            name = data[position:stop].decode()
        elif tag == 0x12:
            datatype = data[position:stop].decode()
        else:
            return None
        position = stop
    if position != end:
        return None
    return name, datatype, shape, fixed_layout(datatype, shape)


def _length_delimited(data: bytes, position: int) -> tuple[int, int, int]:
    """The one-byte tag at ``position``, and where the field's bytes start and end.

    Any wire type is read as if it were length-delimited; callers act only on the tags
    they know (all length-delimited) and give up on any other.
    """
    tag = data[position]
    length = data[position + 1]
    if length < 0x80:
        return tag, position + 2, position + 2 + length
    length, start = _read_varint(data, position + 1)
    return tag, start, start + length


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    """A varint at ``position``, and the position after it.

    IndexError if it is cut short, runs over 10 bytes, or holds more than 64 bits:
    protobuf refuses the first two and cuts the last to 64 bits, so the scanner gives
    all three to protobuf rather than guess.
    """
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >> 64:
                raise IndexError("varint over 64 bits")
            return value, position
        shift += 7
        if shift > 63:
            raise IndexError("varint over 10 bytes")
