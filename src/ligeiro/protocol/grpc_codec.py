"""V2 protobuf ↔ numpy: decode ``ModelInferRequest`` straight into arrays, and back.

On the server, ``ModelInfer``'s usual request is read from the wire without protobuf's
objects (``parse_infer_request``) and its answer written the same way
(``encode_infer_response``); every other message, and any request the reader does not
take, goes through protobuf. ``raw_input_contents`` become arrays viewing their bytes
(a raw input of up to 64 KiB is first copied out of the message, aligned); typed
``contents`` (``fp32_contents`` …) go through one ``np.array`` call each. Answers
carry ``raw_output_contents``, as Triton sends them.

The client's side (``ligeiro.client``'s gRPC clients) is here too: each call is a
``ClientCall`` (method, request, how to decode the answer) that the sync and the async
client both run, so neither knows a message field.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, final

import numpy as np
from google.protobuf.message import DecodeError, Message

from ..errors import InvalidInputError
from ._generated import grpc_service_pb2 as pb
from .codec import (
    PLATFORMS,
    DecodedRequest,
    TensorSpecLike,
    array_from_raw,
    raw_from_array,
    timeout_of,
)
from .datatypes import check_shape, datatype_of, dtype_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from ..repository.registry import ModelState, ModelVersion
    from ..scheduling.stats import Duration, ModelStats

__all__ = [
    "ClientCall",
    "InferRequestMessage",
    "ModelInferCodec",
    "decode_infer_request",
    "decode_message",
    "encode_infer_response",
    "encode_model_metadata",
    "encode_model_statistics",
    "encode_stream_answer",
    "infer_call",
    "live_call",
    "model_metadata_call",
    "parse_infer_request",
    "pb",
    "ready_call",
]

# The typed ``InferTensorContents`` field of each V2 datatype. FP16 has none: it
# travels as raw bytes only.
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_M = TypeVar("_M", bound=Message)
_K = TypeVar("_K")
_R = TypeVar("_R")


def decode_message(message_type: type[_M], data: bytes) -> _M:
    """Parse one protobuf message; bytes that are not one are an InvalidInputError.

    Raises:
        InvalidInputError: ``data`` is not a valid ``message_type``.
    """
    try:
        message: _M = message_type.FromString(data)
    except DecodeError as exc:
        name = message_type.DESCRIPTOR.full_name
        raise InvalidInputError(f"malformed {name} message: {exc}") from None
    return message


def _texts(elements: Iterable[bytes], where: str) -> list[str]:
    # ONNX Runtime string tensors hold text: it would turn bytes into "b'...'".
    texts = []
    for i, element in enumerate(elements):
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{where}BYTES element {i} is not UTF-8 text: {exc}") from None
    return texts


def _from_contents(
    contents: pb.InferTensorContents, datatype: str, dtype: np.dtype, shape: list[int], where: str
) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInputError(
            f"{where}{datatype} has no typed contents field; send it in raw_input_contents"
        )
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise InvalidInputError(
            f"{where}{datatype} data belongs in contents.{field}, got {', '.join(others)}"
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInputError(
            f"{where}shape {shape} holds {count} elements, contents.{field} has {len(values)}"
        )
    if dtype.kind == "O":
        return np.array(_texts(values, where), dtype=object).reshape(shape)
    if dtype.kind in "iu" and dtype.itemsize < 4:
        # int_contents / uint_contents are 32-bit: refuse what the narrow type cannot hold
        # rather than let numpy wrap it around.
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(dtype)
        bad = wide[(wide < info.min) | (wide > info.max)]
        if bad.size:
            raise InvalidInputError(
                f"{where}data out of range for {datatype}: {int(bad[0])} is not in "
                f"[{info.min}, {info.max}]"
            )
        return wide.astype(dtype).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


@final
class InferRequestMessage:
    """A ``ModelInferRequest`` read far enough to route it; ``decode()`` makes its arrays.

    ``parse_infer_request`` reads the usual request (names, datatypes, shapes,
    ``raw_input_contents``, outputs by name) straight from the wire; any other (typed
    ``contents``, parameters, anything unexpected) goes through protobuf's parser and
    ``decode_infer_request``, which also words every error.
    """

    __slots__ = ("_message", "_outputs", "_raw", "_tensors", "id", "model_name", "model_version")

    def __init__(
        self,
        model_name: str,
        model_version: str,
        request_id: str,
        tensors: list[tuple[str, str, list[int]]] | None = None,
        raw: list[bytes | memoryview] | None = None,
        outputs: list[str] | None = None,
        message: pb.ModelInferRequest | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.id = request_id
        self._tensors = tensors
        self._raw = raw
        self._outputs = outputs
        self._message = message

    def decode(self) -> DecodedRequest:
        """Inputs as numpy, the outputs asked for, the id.

        Raises:
            InvalidInputError: as ``decode_infer_request``.
        """
        if self._message is not None:
            return decode_infer_request(self._message)
        inputs: dict[str, np.ndarray] = {}
        if self._tensors:
            for (name, datatype, shape), raw in zip(self._tensors, self._raw or (), strict=True):
                where = f"input {name!r}: "
                inputs[name] = array_from_raw(
                    raw, datatype, shape, where, "raw_input_contents", text=False
                )
        return DecodedRequest(inputs, self._outputs, self.id or None)


@final
class ModelInferCodec:
    """``ModelInfer`` as ``DataPlane.infer`` decodes and encodes it: a parsed request in
    (``parse_infer_request``), a serialized ``ModelInferResponse`` out."""

    __slots__ = ()

    def decode(self, model: ModelVersion, payload: InferRequestMessage) -> DecodedRequest:
        return payload.decode()

    def encode(
        self, model: ModelVersion, request: DecodedRequest, outputs: dict[str, np.ndarray]
    ) -> bytes:
        return encode_infer_response(model.name, model.version, outputs, request.id)


def parse_infer_request(data: bytes) -> InferRequestMessage:
    """Read a serialized ``ModelInferRequest``.

    Raises:
        InvalidInputError: ``data`` is not a ``ModelInferRequest``.
    """
    message = _scan_infer_request(data)
    if message is None:
        request = decode_message(pb.ModelInferRequest, data)
        message = InferRequestMessage(
            request.model_name, request.model_version, request.id, message=request
        )
    return message


# A raw input up to this size is copied out of the message (a new bytes object, aligned
# for any dtype); a larger one is viewed in place, and copied by numpy only when its
# offset in the message leaves it unaligned.
_COPIED_RAW = 64 * 1024
# The tags (field number << 3 | wire type 2) of the fields _scan_infer_request reads.
_MODEL_NAME, _MODEL_VERSION, _ID, _INPUTS, _OUTPUTS, _RAW_INPUT = 0x0A, 0x12, 0x1A, 0x2A, 0x32, 0x3A


def _scan_infer_request(data: bytes) -> InferRequestMessage | None:
    """The usual request, read without protobuf's objects; None for any other.

    Only fields 1, 2, 3 (strings), 5 (inputs with a name, a datatype and a packed
    shape), 6 (outputs with a name) and 7 (one raw entry per input, no input twice)
    are read here; a parameter, typed contents, another field or wire type, or bytes
    that do not parse return None, and protobuf reads the message.
    """
    size = len(data)
    name = version = request_id = ""
    tensors: list[tuple[str, str, list[int]]] = []
    outputs: list[str] | None = None
    raw: list[bytes | memoryview] = []
    view = None
    position = 0
    try:
        while position < size:
            tag, position, end = _length_delimited(data, position)
            if end > size:
                return None
            if tag == _RAW_INPUT:
                if end - position <= _COPIED_RAW:
                    raw.append(data[position:end])
                else:
                    if view is None:
                        view = memoryview(data)
                    raw.append(view[position:end])
            elif tag == _INPUTS:
                tensor = _scan_input(data, position, end)
                if tensor is None:
                    return None
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
            position = end
    except (IndexError, UnicodeDecodeError):
        return None
    if len(raw) != len(tensors) or (
        len(tensors) > 1 and len({t[0] for t in tensors}) != len(tensors)
    ):
        return None
    return InferRequestMessage(name, version, request_id, tensors, raw, outputs)


def _scan_input(data: bytes, position: int, end: int) -> tuple[str, str, list[int]] | None:
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
    return (name, datatype, shape) if position == end else None


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


def decode_infer_request(request: pb.ModelInferRequest) -> DecodedRequest:
    """Turn a ``ModelInferRequest`` into named numpy inputs, the outputs asked for and the id.

    Raises:
        InvalidInputError: an unknown datatype, a negative dimension, data that does not
            fill the shape, raw and typed data mixed, or a feature ligeiro does not serve
            (shared memory).
    """
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw_contents)} entries for {len(request.inputs)} "
            "inputs; send one per input, in the order of inputs"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        where = f"input {name!r}: "
        if name in inputs:
            raise InvalidInputError(f"input {name!r} appears twice")
        if "shared_memory_region" in tensor.parameters:
            raise InvalidInputError(f"{where}shared memory is not supported; send the data")
        dtype = dtype_of(tensor.datatype, where)
        shape = list(tensor.shape)
        check_shape(shape, dtype, where)
        has_contents = tensor.HasField("contents")
        if raw_contents:
            if has_contents:
                raise InvalidInputError(
                    f"{where}both contents and raw_input_contents given; use one of them"
                )
            inputs[name] = array_from_raw(
                raw_contents[i], tensor.datatype, shape, where, "raw_input_contents", text=False
            )
        elif has_contents:
            inputs[name] = _from_contents(tensor.contents, tensor.datatype, dtype, shape, where)
        else:
            raise InvalidInputError(f"{where}no data (expected contents or raw_input_contents)")
    for output in request.outputs:
        if "classification" in output.parameters:  # as REST: refused, not ignored
            raise InvalidInputError(
                f"output {output.name!r}: the classification extension is not supported"
            )
    outputs = [o.name for o in request.outputs] if request.outputs else None
    timeout = None
    if "timeout" in request.parameters:
        parameter = request.parameters["timeout"]
        choice = parameter.WhichOneof("parameter_choice")
        timeout = timeout_of(getattr(parameter, choice) if choice else None)
    return DecodedRequest(inputs, outputs, request.id or None, timeout_s=timeout)


def _duration(duration: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)


def encode_model_statistics(
    stats: Iterable[tuple[ModelState, ModelStats]],
) -> pb.ModelStatisticsResponse:
    """``ModelStatistics``' answer; the same numbers as REST's ``/stats``."""
    return pb.ModelStatisticsResponse(
        model_stats=[
            pb.ModelStatistics(
                name=state.name,
                version=state.version,
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                inference_stats=pb.InferStatistics(
                    success=_duration(s.success),
                    fail=_duration(s.fail),
                    queue=_duration(s.queue),
                    compute_infer=_duration(s.compute_infer),
                ),
                batch_stats=[
                    pb.InferBatchStatistics(batch_size=size, compute_infer=_duration(d))
                    for size, d in sorted(s.batches.items())
                ],
            )
            for state, s in stats
        ]
    )


def encode_infer_response(
    model_name: str, model_version: str, outputs: dict[str, np.ndarray], request_id: str | None
) -> bytes:
    """A serialized ``ModelInferResponse``, each output's bytes in ``raw_output_contents``.

    Written field by field, byte for byte what ``SerializeToString`` writes (fields in
    number order, empty strings left out, shapes packed): building the message object
    costs more than the model on a small one. The model's name and version, and each
    output's name, datatype and shape entry, are kept once made: answers repeat them.
    """
    head = _HEADS.get((model_name, model_version))
    if head is None:
        head = _text_field(b"\x0a", model_name) + _text_field(b"\x12", model_version)
        _keep(_HEADS, (model_name, model_version), head)
    parts = [head]
    if request_id:
        parts.append(_text_field(b"\x1a", request_id))
    contents: list[bytes] = []
    for name, array in outputs.items():
        key = (name, array.dtype, array.shape)
        entry = _OUTPUT_ENTRIES.get(key)
        if entry is None:
            entry = _output_entry(name, datatype_of(array.dtype), array.shape)
            _keep(_OUTPUT_ENTRIES, key, entry)
        parts.append(entry)
        raw = raw_from_array(array)
        contents += (b"\x32", _varint(len(raw)), raw)
    parts += contents
    return b"".join(parts)


def encode_stream_answer(response: bytes) -> bytes:
    """A serialized ``ModelStreamInferResponse`` carrying ``response`` (a serialized answer)."""
    return b"\x12" + _varint(len(response)) + response


_VARINTS = tuple(bytes((i,)) for i in range(128))
# Encoded pieces that answers repeat: model name and version, each output's entry.
_HEADS: dict[tuple[str, str], bytes] = {}
_OUTPUT_ENTRIES: dict[tuple[str, np.dtype, tuple[int, ...]], bytes] = {}
_KEPT = 1024


def _keep(cache: dict[_K, bytes], key: _K, value: bytes) -> None:
    if len(cache) >= _KEPT:  # shapes that vary without end: start again
        cache.clear()
    cache[key] = value


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _text_field(tag: bytes, text: str) -> bytes:
    """A string field (nothing when empty, as proto3 writes it)."""
    if not text:
        return b""
    data = text.encode("utf-8")
    return tag + _varint(len(data)) + data


def _output_entry(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    """One ``outputs`` entry of a ``ModelInferResponse``: field 5, an InferOutputTensor."""
    tensor = _text_field(b"\x0a", name) + _text_field(b"\x12", datatype)
    if shape:
        packed = b"".join(_varint(d) for d in shape)
        tensor += b"\x1a" + _varint(len(packed)) + packed
    return b"\x2a" + _varint(len(tensor)) + tensor


def _tensor_metadata(
    specs: Iterable[TensorSpecLike],
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=s.name, datatype=datatype_of(s.dtype), shape=s.shape
        )
        for s in specs
    ]


def encode_model_metadata(
    name: str,
    versions: list[str],
    platform: str,
    inputs: Iterable[TensorSpecLike],
    outputs: Iterable[TensorSpecLike],
    provider: str = "",
) -> pb.ModelMetadataResponse:
    """A ``ModelMetadataResponse``: name, versions, platform, inputs and outputs, and
    the execution provider of an ONNX model (``parameters["execution_provider"]``)."""
    answer = pb.ModelMetadataResponse(
        name=name,
        versions=versions,
        platform=PLATFORMS[platform],
        inputs=_tensor_metadata(inputs),
        outputs=_tensor_metadata(outputs),
    )
    if provider:
        answer.parameters["execution_provider"].string_param = provider
    return answer


# -- the client's side ----------------------------------------------------------------


class ClientCall(NamedTuple, Generic[_R]):
    """One unary call described, not made: the transport sends it and decodes the answer."""

    method: str
    """The ``inference.GRPCInferenceService`` method, e.g. ``"ModelInfer"``."""
    request: Message
    decode: Callable[[Any], _R]
    """Turns the answer message into what the client returns."""


def live_call() -> ClientCall[bool]:
    """``ServerLive``: whether the server is live."""
    return ClientCall("ServerLive", pb.ServerLiveRequest(), lambda answer: bool(answer.live))


def ready_call() -> ClientCall[bool]:
    """``ServerReady``: whether the server is ready."""
    return ClientCall("ServerReady", pb.ServerReadyRequest(), lambda answer: bool(answer.ready))


def _tensor_dicts(
    tensors: Iterable[pb.ModelMetadataResponse.TensorMetadata],
) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def _metadata_dict(answer: pb.ModelMetadataResponse) -> dict[str, Any]:
    # The shape of REST's ``GET /v2/models/{m}`` body, so both clients return the same.
    found = {
        "name": answer.name,
        "versions": list(answer.versions),
        "platform": answer.platform,
        "inputs": _tensor_dicts(answer.inputs),
        "outputs": _tensor_dicts(answer.outputs),
    }
    if answer.parameters:
        found["parameters"] = {
            key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in answer.parameters.items()
        }
    return found


def model_metadata_call(model: str, version: str | None) -> ClientCall[dict[str, Any]]:
    """``ModelMetadata`` as REST's dict: name, versions, platform, inputs and outputs."""
    request = pb.ModelMetadataRequest(name=model, version=version or "")
    return ClientCall("ModelMetadata", request, _metadata_dict)


def _outputs(answer: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    raw = answer.raw_output_contents
    outputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(answer.outputs):
        where, shape = f"output {tensor.name!r}: ", list(tensor.shape)
        if raw:
            array = array_from_raw(raw[i], tensor.datatype, shape, where, "raw_output_contents")
        else:  # a server that answers in typed contents (KServe's do)
            dtype = dtype_of(tensor.datatype, where)
            array = _from_contents(tensor.contents, tensor.datatype, dtype, shape, where)
        outputs[tensor.name] = array
    return outputs


def infer_call(
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None,
    version: str | None,
    request_id: str | None,
    timeout_us: int | None = None,
) -> ClientCall[dict[str, np.ndarray]]:
    """``ModelInfer`` with each input's bytes in ``raw_input_contents``; outputs as arrays.

    Decoding raises ``InvalidInputError`` for an answer whose data does not fit its shape.
    """
    request = pb.ModelInferRequest(
        model_name=model, model_version=version or "", id=request_id or ""
    )
    if timeout_us is not None:
        request.parameters["timeout"].int64_param = timeout_us
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        request.raw_input_contents.append(raw_from_array(array))
    for name in outputs or ():
        request.outputs.add(name=name)
    return ClientCall("ModelInfer", request, _outputs)
