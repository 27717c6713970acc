"""V2 protobuf ↔ numpy: decode ``ModelInferRequest`` straight into arrays, and back.

On the server, ``ModelInfer``'s usual request is read from the wire without protobuf's
objects (``parse_infer_request``) and its answer written the same way
(``encode_infer_response``); every other message, and any request the reader does not
take, goes through protobuf. ``raw_input_contents`` become arrays viewing their bytes
(a raw input of up to 64 KiB is first copied out of the message, aligned); typed
``contents`` (``fp32_contents`` …) go through one ``np.array`` call each. Answers
carry ``raw_output_contents``, as Triton sends them.

``grpc_scan.py`` holds the reader of the usual request; ``grpc_client.py`` the client's
side.

The generated messages (``pb``) are imported on the first read of one of them: a server
whose gRPC port only answers the usual ModelInfer, or sees no call at all, never builds
protobuf's descriptors for the service (2.3 MiB resident, ADR 0009).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from typing import TYPE_CHECKING, TypeVar, final

import msgspec
import numpy as np
from google.protobuf.message import DecodeError, Message

from ..errors import InvalidInputError
from .codec import PLATFORMS, DecodedRequest, array_from_raw, raw_from_array, timeout_of
from .raw import is_plain
from .datatypes import check_shape, datatype_of, dtype_of
from .grpc_scan import ScannedInput, scan_infer_request

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import ModuleType

    from ._generated import grpc_service_pb2 as pb
    from .types import (
        DurationLike,
        ServedModel,
        StatisticsLike,
        TensorSpecLike,
        VersionStateLike,
    )


def _lazily(name: str) -> ModuleType:
    """Module ``name``, run on the first read of one of its attributes (importlib's
    ``LazyLoader``, as its documentation sets it up); the one in ``sys.modules`` if
    it is imported already."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module {name}")
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


if not TYPE_CHECKING:
    pb = _lazily(f"{__package__}._generated.grpc_service_pb2")

__all__ = [
    "InferRequestMessage",
    "ModelInferCodec",
    "array_from_contents",
    "decode_infer_request",
    "decode_message",
    "encode_infer_response",
    "encode_model_metadata",
    "encode_model_statistics",
    "encode_stream_answer",
    "parse_infer_request",
    "pb",
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
_V = TypeVar("_V")


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


def array_from_contents(
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
class InferRequestMessage(msgspec.Struct, gc=False):
    """A ``ModelInferRequest`` read far enough to route it; ``decode()`` makes its arrays.

    ``parse_infer_request`` reads the usual request (names, datatypes, shapes,
    ``raw_input_contents``, outputs by name) straight from the wire; any other (typed
    ``contents``, parameters, anything unexpected) goes through protobuf's parser and
    ``decode_infer_request``, which also words every error. A msgspec struct: made
    without a Python ``__init__``, once a call.
    """

    model_name: str
    model_version: str
    id: str
    _tensors: list[ScannedInput] | None = None
    _raw: list[bytes | memoryview] | None = None
    _outputs: list[str] | None = None
    _message: pb.ModelInferRequest | None = None

    def decode(self) -> DecodedRequest:
        """Inputs as numpy, the outputs asked for, the id.

        Raises:
            InvalidInputError: as ``decode_infer_request``.
        """
        if self._message is not None:
            return decode_infer_request(self._message)
        inputs: dict[str, np.ndarray] = {}
        if self._tensors:
            # As many raw contents as tensors: scan_infer_request checked it (zip's
            # strict=True would cost its keyword's parsing, 1 % of a small request).
            for (name, datatype, shape, layout), raw in zip(self._tensors, self._raw or ()):
                if layout is not None and len(raw) == layout[1]:  # all array_from_raw checks
                    array = np.ndarray(shape, layout[0], raw)
                    inputs[name] = array if array.flags.aligned else array.copy()
                else:  # BYTES, BOOL, or bytes it refuses, in its words
                    inputs[name] = array_from_raw(
                        raw, datatype, shape, f"input {name!r}: ", "raw_input_contents",
                        text=False,
                    )
        return DecodedRequest(inputs, self._outputs, self.id or None)


@final
class ModelInferCodec:
    """``ModelInfer`` as ``DataPlane.infer`` decodes and encodes it: a parsed request in
    (``parse_infer_request``), a serialized ``ModelInferResponse`` out."""

    __slots__ = ()

    def decode(self, model: ServedModel, payload: InferRequestMessage) -> DecodedRequest:
        return payload.decode()

    def encode(
        self, model: ServedModel, request: DecodedRequest, outputs: dict[str, np.ndarray]
    ) -> bytes:
        return encode_infer_response(model.name, model.version, outputs, request.id)


def parse_infer_request(data: bytes) -> InferRequestMessage:
    """Read a serialized ``ModelInferRequest``.

    Raises:
        InvalidInputError: ``data`` is not a ``ModelInferRequest``.
    """
    scanned = scan_infer_request(data)
    if scanned is None:
        request = decode_message(pb.ModelInferRequest, data)
        return InferRequestMessage(
            request.model_name, request.model_version, request.id, _message=request
        )
    return InferRequestMessage(*scanned)


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
            inputs[name] = array_from_contents(
                tensor.contents, tensor.datatype, dtype, shape, where
            )
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


def _duration(duration: DurationLike) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)


def encode_model_statistics(
    stats: Iterable[tuple[VersionStateLike, StatisticsLike]],
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
        kept = _OUTPUT_ENTRIES.get(key)
        if kept is None:
            kept = _output_entry(name, array.dtype, array.shape)
            _keep(_OUTPUT_ENTRIES, key, kept)
        entry, raw_head = kept
        parts.append(entry)
        if raw_head:  # its raw bytes are tobytes(), of a size its shape says
            contents += (raw_head, array.tobytes())
        else:
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
_OUTPUT_ENTRIES: dict[tuple[str, np.dtype, tuple[int, ...]], tuple[bytes, bytes]] = {}
_KEPT = 1024


def _keep(cache: dict[_K, _V], key: _K, value: _V) -> None:
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


def _output_entry(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[bytes, bytes]:
    """One ``outputs`` entry of a ``ModelInferResponse`` (field 5, an InferOutputTensor),
    and, where ``raw_from_array`` of such an array is its ``tobytes()``, the tag and
    length of its ``raw_output_contents`` entry (else ``b""``)."""
    tensor = _text_field(b"\x0a", name) + _text_field(b"\x12", datatype_of(dtype))
    if shape:
        packed = b"".join(_varint(d) for d in shape)
        tensor += b"\x1a" + _varint(len(packed)) + packed
    raw_head = b"\x32" + _varint(math.prod(shape) * dtype.itemsize) if is_plain(dtype) else b""
    return b"\x2a" + _varint(len(tensor)) + tensor, raw_head


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
