"""V2 JSON ↔ numpy: decode requests straight into arrays, encode answers from them.

Also Triton's binary tensor data extension (``binary_tensor_data``): when a request
carries ``Inference-Header-Content-Length: N``, its first N bytes are the JSON header
and the rest holds the tensors whose ``parameters.binary_data_size`` is set, in input
order, little-endian; BYTES elements are a 4-byte little-endian length, then the bytes.
Outputs asked for with ``binary_data`` (or all of them, with the request-level
``binary_data_output``) travel the same way after the JSON of the answer.
"""

from __future__ import annotations

import math
from itertools import chain
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import msgspec
import numpy as np

from ..errors import InvalidInputError
from .datatypes import check_shape, datatype_of, dtype_of, fits_without_overflow
from .raw import array_from_raw, raw_from_array
from .messages import (
    ErrorResponse,
    InferRequest,
    InferResponse,
    ModelMetadata,
    RepositoryModel,
    RequestInput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)
from .typed_json import TypedRequest, decode_typed
from .types import TensorSpecLike

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .types import DurationLike, ServedModel, StatisticsLike, VersionStateLike

__all__ = [
    "DecodedRequest",
    "RestInferCodec",
    "array_from_raw",
    "decode_infer_request",
    "decode_json",
    "decode_json_object",
    "encode_binary_infer_response",
    "encode_error",
    "encode_health",
    "encode_infer_response",
    "encode_model_metadata",
    "encode_model_stats",
    "encode_repository_index",
    "encode_server_metadata",
    "header_length_of",
    "raw_from_array",
    "tensor_from_binary",
    "tensor_from_json",
    "timeout_of",
]

_decoder = msgspec.json.Decoder(InferRequest)
_encoder = msgspec.json.Encoder()

# The platform names Triton reports, per ligeiro platform; clients key on them.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "python": "python", "pipeline": "ensemble"}
# The extension's HTTP header, and the one name GET /v2 advertises for it.
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_EXTENSION = "binary_tensor_data"


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 1 µs more to make
class DecodedRequest:
    """An inference request in numpy: inputs by name, outputs asked for, request id.

    ``binary_outputs`` says which outputs the answer carries as binary data: ``False``
    for none (plain JSON), ``True`` for all, else the set of their names.
    ``timeout_s`` is the request's ``timeout`` parameter (sent in microseconds, as
    Triton): how long it may wait in a queue.
    """

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    id: str | None
    binary_outputs: frozenset[str] | bool = False
    timeout_s: float | None = None


def timeout_of(value: object) -> float | None:
    """The V2 ``timeout`` request parameter (microseconds) in seconds; None when absent."""
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise InvalidInputError(
            f"parameter timeout must be a whole number of microseconds >= 0, got {value!r}"
        )
    return value / 1e6 if value else None  # 0: no timeout, as Triton


def decode_json(body: bytes | memoryview, decoder: msgspec.json.Decoder[Any], what: str) -> Any:
    """Decode ``body``; malformed JSON or a wrong structure is an InvalidInputError.

    msgspec's message says what and where:
    ``Expected `int`, got `str` - at `$.inputs[0].shape[0]```.
    """
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise InvalidInputError(f"invalid {what}: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec lets this one through, for a JSON string
        raise InvalidInputError(
            f"invalid {what}: a JSON string is not valid UTF-8 ({exc.reason})"
        ) from None
    except RecursionError:  # msgspec's own depth limit, not Python's stack
        raise InvalidInputError(f"invalid {what}: JSON nested too deeply") from None


_object_decoder = msgspec.json.Decoder(dict[str, Any])


def decode_json_object(body: bytes, what: str) -> dict[str, Any]:
    """An optional JSON object body (the repository API's): empty means ``{}``.

    Raises:
        InvalidInputError: malformed JSON, or not an object.
    """
    if not body.strip(b" \t\r\n"):  # JSON's whitespace only: b"\x0b" is malformed
        return {}
    value: dict[str, Any] = decode_json(body, _object_decoder, what)
    return value


def _first_scalar(data: Any) -> Any:
    while isinstance(data, list) and data:
        data = data[0]
    return data


_NUMBER_TYPES = frozenset((float, int))
_JSON_KINDS = {type(None): "null", list: "list", dict: "object"}


def _numbers(data: list[Any]) -> tuple[list[Any] | None, Any]:
    """``(data's elements, None)`` (nested lists flattened) when all are JSON numbers,
    else ``(None, the first that is not one)``; C-speed scans (``map(type)``) for the
    usual all-numbers case."""
    flat = data
    while flat and isinstance(flat[0], list):
        try:
            flat = list(chain.from_iterable(flat))
        except TypeError:  # a number beside the lists: ragged
            return None, next(v for v in flat if not isinstance(v, list))
    if set(map(type, flat)) <= _NUMBER_TYPES:
        return flat, None
    return None, next(v for v in flat if type(v) not in _NUMBER_TYPES)


def _json_kind(value: Any) -> str:
    kind = _JSON_KINDS.get(type(value), type(value).__name__)
    return kind if value is None or isinstance(value, (list, dict)) else f"{kind} {value!r}"


def tensor_from_json(tensor: RequestInput) -> np.ndarray:
    """Turn one V2 JSON tensor (flat or nested ``data``) into a numpy array of its shape.

    Raises:
        InvalidInputError: unknown datatype, data of the wrong kind, or an element
            count that does not match ``shape``.
    """
    where = f"input {tensor.name!r}: "
    dtype = dtype_of(tensor.datatype, where)
    shape = tensor.shape
    check_shape(shape, dtype, where)
    data = tensor.data
    if data is None:
        raise InvalidInputError(f"{where}no data (expected a 'data' list)")
    if not isinstance(data, list):
        data = [data]
    kind = dtype.kind
    try:
        if kind == "O":
            first = _first_scalar(data)
            if isinstance(first, list) or (data and not isinstance(first, str)):
                raise InvalidInputError(
                    f"{where}BYTES data must be strings, got {type(first).__name__}"
                )
            array = np.array(data, dtype=object)
        elif kind == "f":
            # Strict: numpy would read "2.5", true and null (as NaN) without a word.
            # (:predict reads null as NaN on purpose, for imputers: protocol/predict.py.)
            flat, wrong = _numbers(data)
            if flat is None:
                raise InvalidInputError(
                    f"{where}{tensor.datatype} data must be numbers, got {_json_kind(wrong)}"
                )
            if fits_without_overflow(flat, dtype):
                array = np.array(data, dtype=dtype)
            else:
                with np.errstate(over="raise"):  # 1e39 as FP32: out of range, not inf
                    array = np.array(data, dtype=dtype)
        else:
            # Integers and booleans: refuse floats (numpy would truncate them silently)
            # and out-of-range values (numpy raises OverflowError).
            wanted = bool if kind == "b" else int
            wrong = next(
                (v for v in np.array(data, dtype=object).ravel() if type(v) is not wanted), None
            )
            if wrong is not None:
                expected = "true/false" if kind == "b" else "integers"
                raise InvalidInputError(
                    f"{where}{tensor.datatype} data must be {expected}, "
                    f"got {type(wrong).__name__} {wrong!r}"
                )
            array = np.array(data, dtype=dtype)
    except (OverflowError, FloatingPointError) as exc:
        raise InvalidInputError(f"{where}data out of range for {tensor.datatype}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{where}data does not fit {tensor.datatype}: {exc}") from None
    count = math.prod(shape)
    if array.size != count:
        raise InvalidInputError(
            f"{where}shape {shape} holds {count} elements, data has {array.size}"
        )
    if array.shape != tuple(shape):
        array = array.reshape(shape)
    return array


def tensor_from_binary(tensor: RequestInput, raw: memoryview) -> np.ndarray:
    """Turn one tensor sent as binary data (its ``binary_data_size`` bytes) into numpy.

    Raises:
        InvalidInputError: JSON ``data`` as well, or what ``array_from_raw`` refuses.
    """
    where = f"input {tensor.name!r}: "
    if tensor.data is not None:
        raise InvalidInputError(f"{where}has both JSON 'data' and binary_data_size; send one")
    # BYTES stay bytes: the engine decodes those a model reads as text.
    return array_from_raw(raw, tensor.datatype, tensor.shape, where, "binary data", text=False)


def header_length_of(value: bytes, body_size: int) -> int:
    """Parse ``Inference-Header-Content-Length`` against the size of the body it splits.

    Raises:
        InvalidInputError: not a non-negative integer, or larger than the body.
    """
    if not value.isdigit():
        raise InvalidInputError(
            f"{HEADER_LENGTH} must be a non-negative integer, got {value.decode('latin-1')!r}"
        )
    length = int(value)
    if length > body_size:
        raise InvalidInputError(
            f"{HEADER_LENGTH} is {length} but the body has only {body_size} bytes"
        )
    return length


def _decode_inputs(message: InferRequest, binary: memoryview | None) -> dict[str, np.ndarray]:
    """Each input from its JSON ``data``, or from its ``binary_data_size`` bytes in turn."""
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in message.inputs:
        if tensor.name in inputs:
            raise InvalidInputError(f"input {tensor.name!r} appears twice")
        # Plain JSON requests only pay this None check.
        size = tensor.parameters.get("binary_data_size") if tensor.parameters else None
        if size is None:
            inputs[tensor.name] = tensor_from_json(tensor)
            continue
        if type(size) is not int or size < 0:
            raise InvalidInputError(
                f"input {tensor.name!r}: binary_data_size must be a non-negative integer, "
                f"got {size!r}"
            )
        if binary is None:
            raise InvalidInputError(
                f"input {tensor.name!r}: binary_data_size {size} but no binary data "
                f"(the {HEADER_LENGTH} header is missing)"
            )
        if offset + size > len(binary):
            raise InvalidInputError(
                f"input {tensor.name!r}: binary_data_size {size} runs past the end of the "
                f"body: {len(binary) - offset} of the {len(binary)} bytes after the JSON "
                f"header are left"
            )
        inputs[tensor.name] = tensor_from_binary(tensor, binary[offset : offset + size])
        offset += size
    if binary is not None and offset != len(binary):
        raise InvalidInputError(
            f"{len(binary)} bytes follow the JSON header but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    return inputs


def _binary_outputs(message: InferRequest | TypedRequest) -> frozenset[str] | bool:
    """Which outputs to send as binary: per output ``binary_data``, else the request's."""
    params = message.parameters
    default = params.get("binary_data_output", False) if params else False
    if type(default) is not bool:
        raise InvalidInputError(f"parameter binary_data_output must be true/false, got {default!r}")
    if not message.outputs:
        return default
    names = []
    for output in message.outputs:
        binary = default
        if output.parameters:
            binary = output.parameters.get("binary_data", default)
            if type(binary) is not bool:
                raise InvalidInputError(
                    f"output {output.name!r}: binary_data must be true/false, got {binary!r}"
                )
            if "classification" in output.parameters:
                raise InvalidInputError(
                    f"output {output.name!r}: the classification extension is not supported"
                )
        if binary:
            names.append(output.name)
    return frozenset(names)


def decode_infer_request(body: bytes, header_length: int | None = None) -> DecodedRequest:
    r"""Decode a ``POST /v2/models/{m}/infer`` body: JSON, or JSON then binary tensors.

    Args:
        body: the whole request body.
        header_length: the ``Inference-Header-Content-Length`` value, if the request
            carried one (see ``header_length_of``): the JSON is that many bytes and
            the rest is binary tensor data.

    Raises:
        InvalidInputError: malformed JSON, a missing field, a bad tensor, or binary data
            whose sizes do not add up.

    Example:
        >>> head = b'{"inputs":[{"name":"x","shape":[2],"datatype":"INT8",'
        >>> head += b'"parameters":{"binary_data_size":2}}]}'
        >>> decode_infer_request(head + b"\x01\x02", len(head)).inputs["x"]
        array([1, 2], dtype=int8)
    """
    if header_length is None:
        message: InferRequest = decode_json(body, _decoder, "inference request")
        binary = None
    else:
        view = memoryview(body)
        message = decode_json(view[:header_length], _decoder, "inference request")
        binary = view[header_length:]
    return _request(message, _decode_inputs(message, binary))


def _request(message: InferRequest | TypedRequest, inputs: dict[str, np.ndarray]) -> DecodedRequest:
    """The decoded request: ``inputs``, and what ``message`` asks of the answer."""
    outputs = [o.name for o in message.outputs] if message.outputs else None
    params = message.parameters
    if params is None:
        binary_outputs = False if outputs is None else _binary_outputs(message)
        return DecodedRequest(inputs, outputs, message.id, binary_outputs)
    return DecodedRequest(
        inputs, outputs, message.id, _binary_outputs(message), timeout_of(params.get("timeout"))
    )


def _json_data(array: np.ndarray) -> list[Any]:
    data: list[Any] = array.ravel().tolist()
    if array.dtype.kind in "OS" and data and isinstance(data[0], bytes):
        data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in data]
    return data


def encode_infer_response(
    model_name: str, model_version: str, outputs: dict[str, np.ndarray], request_id: str | None
) -> bytes:
    """Encode a V2 inference response; ``data`` is flat, row-major, as Triton sends it."""
    # A loop, not a comprehension: in Python 3.11 that is one more call a request.
    tensors = []
    for name, array in outputs.items():
        tensors.append(
            ResponseOutput(name, datatype_of(array.dtype), array.shape, _json_data(array))
        )
    return _encoder.encode(InferResponse(model_name, tensors, model_version, request_id))


def encode_binary_infer_response(
    model_name: str,
    model_version: str,
    outputs: dict[str, np.ndarray],
    request_id: str | None,
    binary_outputs: frozenset[str] | bool,
) -> tuple[bytes, int]:
    """Encode a V2 response with some outputs as binary data after the JSON.

    Args:
        binary_outputs: ``True`` for every output, else the names of those to send as
            binary (``DecodedRequest.binary_outputs``).

    Returns:
        The body, and the size of its JSON header (the ``Inference-Header-Content-Length``).
    """
    every = binary_outputs is True
    names = binary_outputs if isinstance(binary_outputs, frozenset) else frozenset()
    tensors = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        datatype = datatype_of(array.dtype)
        if every or name in names:
            raw = raw_from_array(array)
            chunks.append(raw)
            tensors.append(
                ResponseOutput(
                    name, datatype, array.shape, parameters={"binary_data_size": len(raw)}
                )
            )
        else:
            tensors.append(ResponseOutput(name, datatype, array.shape, _json_data(array)))
    header = _encoder.encode(
        InferResponse(
            model_name=model_name, outputs=tensors, model_version=model_version, id=request_id
        )
    )
    return b"".join([header, *chunks]), len(header)


@final
class RestInferCodec:
    """``POST /v2/models/{m}/infer`` as ``DataPlane.infer`` decodes and encodes it.

    The payload is the body and the raw ``Inference-Header-Content-Length`` (or
    ``None``); the answer is the body and, when it carries binary outputs, the size of
    its JSON header (``None`` for plain JSON).
    """

    __slots__ = ()

    def decode(self, model: ServedModel, payload: tuple[bytes, bytes | None]) -> DecodedRequest:
        body, header_length = payload
        if header_length is None:
            # The common shape first (protocol/typed_json.py); the rest, the generic way.
            dtype = model.input_dtype
            typed = None if dtype is None else decode_typed(body, dtype)
            if typed is not None:
                return _request(typed[1], typed[0])
            return decode_infer_request(body)
        return decode_infer_request(body, header_length_of(header_length, len(body)))

    def encode(
        self, model: ServedModel, request: DecodedRequest, outputs: dict[str, np.ndarray]
    ) -> tuple[bytes, int | None]:
        if not request.binary_outputs:
            return encode_infer_response(model.name, model.version, outputs, request.id), None
        return encode_binary_infer_response(
            model.name, model.version, outputs, request.id, request.binary_outputs
        )


def _tensor_metadata(specs: Iterable[TensorSpecLike]) -> list[TensorMetadata]:
    return [TensorMetadata(s.name, datatype_of(s.dtype), list(s.shape)) for s in specs]


def encode_model_metadata(
    name: str,
    versions: list[str],
    platform: str,
    inputs: Iterable[TensorSpecLike],
    outputs: Iterable[TensorSpecLike],
    provider: str = "",
) -> bytes:
    """Encode ``GET /v2/models/{m}``: name, versions, platform, inputs and outputs, and
    the execution provider of an ONNX model (``parameters.execution_provider``)."""
    return _encoder.encode(
        ModelMetadata(
            name,
            versions,
            PLATFORMS[platform],
            _tensor_metadata(inputs),
            _tensor_metadata(outputs),
            _provider_parameters(provider),
        )
    )


def _provider_parameters(provider: str) -> dict[str, str] | None:
    return {"execution_provider": provider} if provider else None


def encode_server_metadata(version: str, extensions: list[str]) -> bytes:
    """Encode ``GET /v2``."""
    return _encoder.encode(ServerMetadata("ligeiro", version, extensions))


def encode_health(field: str, value: bool, name: str | None = None) -> bytes:
    """Encode ``{"live": true}``, ``{"ready": true}`` or ``{"name": m, "ready": true}``."""
    body: dict[str, str | bool] = {} if name is None else {"name": name}
    body[field] = value
    return _encoder.encode(body)


def encode_repository_index(
    states: Iterable[VersionStateLike], redact: Callable[[str], str] | None = None
) -> bytes:
    """Encode the repository index: ``[{"name", "version", "state", "reason"}, ...]``,
    with ``parameters.execution_provider`` for a ready ONNX version; each reason through
    ``redact`` when given (the server's paths stay out of what clients read)."""
    return _encoder.encode(
        [
            RepositoryModel(
                s.name,
                s.version,
                "READY" if s.is_ready else "UNAVAILABLE",
                s.index_reason if redact is None or not s.index_reason else redact(s.index_reason),
                _provider_parameters(s.provider),
            )
            for s in states
        ]
    )


def encode_error(message: str) -> bytes:
    """Encode the V2 error body ``{"error": "..."}``."""
    return _encoder.encode(ErrorResponse(message))


def _duration(duration: DurationLike) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}


def encode_model_stats(stats: Iterable[tuple[VersionStateLike, StatisticsLike]]) -> bytes:
    """Triton's ``GET /v2/models/{m}/stats`` answer.

    ``compute_input`` and ``compute_output`` are absent: ligeiro does not time the
    runtime's input and output copies apart from the run (they are in ``compute_infer``).
    """
    models = [
        {
            "name": state.name,
            "version": state.version,
            "last_inference": s.last_inference_ms,
            "inference_count": s.inference_count,
            "execution_count": s.execution_count,
            "inference_stats": {
                "success": _duration(s.success),
                "fail": _duration(s.fail),
                "queue": _duration(s.queue),
                "compute_infer": _duration(s.compute_infer),
            },
            "batch_stats": [
                {"batch_size": size, "compute_infer": _duration(d)}
                for size, d in sorted(s.batches.items())
            ],
        }
        for state, s in stats
    ]
    return _encoder.encode({"model_stats": models})
