"""V2 JSON ↔ numpy: decode requests straight into arrays, encode answers from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import numpy as np

from ..errors import InvalidInputError
from .datatypes import datatype_of, dtype_of
from .messages import (
    ErrorResponse,
    InferRequest,
    InferResponse,
    ModelMetadata,
    RequestInput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DecodedRequest",
    "decode_infer_request",
    "decode_json",
    "encode_error",
    "encode_health",
    "encode_infer_response",
    "encode_model_metadata",
    "encode_server_metadata",
    "tensor_from_json",
]

_decoder = msgspec.json.Decoder(InferRequest)
_encoder = msgspec.json.Encoder()

# The platform name Triton reports for ONNX Runtime models; clients key on it.
PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    """An inference request in numpy: inputs by name, outputs asked for, request id."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    id: str | None


def decode_json(body: bytes, decoder: msgspec.json.Decoder[Any], what: str) -> Any:
    """Decode ``body``; malformed JSON or a wrong structure is an InvalidInputError.

    msgspec's message says what and where:
    ``Expected `int`, got `str` - at `$.inputs[0].shape[0]```.
    """
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise InvalidInputError(f"invalid {what}: {exc}") from None


def _first_scalar(data: Any) -> Any:
    while isinstance(data, list) and data:
        data = data[0]
    return data


def tensor_from_json(tensor: RequestInput) -> np.ndarray:
    """Turn one V2 JSON tensor (flat or nested ``data``) into a numpy array of its shape.

    Raises:
        InvalidInputError: unknown datatype, data of the wrong kind, or an element
            count that does not match ``shape``.
    """
    where = f"input {tensor.name!r}: "
    dtype = dtype_of(tensor.datatype, where)
    shape = tensor.shape
    if shape and min(shape) < 0:
        raise InvalidInputError(f"{where}shape {shape} has a negative dimension")
    data = tensor.data
    if data is None:
        raise InvalidInputError(f"{where}no data (expected a 'data' list)")
    if not isinstance(data, list):
        data = [data]
    first = _first_scalar(data)
    kind = dtype.kind
    try:
        if kind == "O":
            if isinstance(first, list) or (data and not isinstance(first, str)):
                raise InvalidInputError(
                    f"{where}BYTES data must be strings, got {type(first).__name__}"
                )
            array = np.array(data, dtype=object)
        elif kind == "f":
            if isinstance(first, (str, bool)):
                raise InvalidInputError(
                    f"{where}{tensor.datatype} data must be numbers, "
                    f"got {type(first).__name__} {first!r}"
                )
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
    except OverflowError as exc:
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


def decode_infer_request(body: bytes) -> DecodedRequest:
    """Decode a ``POST /v2/models/{m}/infer`` JSON body.

    Raises:
        InvalidInputError: malformed JSON, a missing field, or a bad tensor.
    """
    message: InferRequest = decode_json(body, _decoder, "inference request")
    inputs: dict[str, np.ndarray] = {}
    for tensor in message.inputs:
        if tensor.name in inputs:
            raise InvalidInputError(f"input {tensor.name!r} appears twice")
        inputs[tensor.name] = tensor_from_json(tensor)
    outputs = [o.name for o in message.outputs] if message.outputs else None
    return DecodedRequest(inputs, outputs, message.id)


def _json_data(array: np.ndarray) -> list[Any]:
    data: list[Any] = array.ravel().tolist()
    if array.dtype.kind in "OS" and data and isinstance(data[0], bytes):
        data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in data]
    return data


def encode_infer_response(
    model_name: str, model_version: str, outputs: dict[str, np.ndarray], request_id: str | None
) -> bytes:
    """Encode a V2 inference response; ``data`` is flat, row-major, as Triton sends it."""
    tensors = [
        ResponseOutput(name, datatype_of(array.dtype), list(array.shape), _json_data(array))
        for name, array in outputs.items()
    ]
    return _encoder.encode(
        InferResponse(
            model_name=model_name, outputs=tensors, model_version=model_version, id=request_id
        )
    )


class TensorSpecLike(Protocol):
    """What metadata needs of a tensor spec (``runtime.base.TensorSpec`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> np.dtype: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


def _tensor_metadata(specs: Iterable[TensorSpecLike]) -> list[TensorMetadata]:
    return [TensorMetadata(s.name, datatype_of(s.dtype), list(s.shape)) for s in specs]


def encode_model_metadata(
    name: str,
    versions: list[str],
    inputs: Iterable[TensorSpecLike],
    outputs: Iterable[TensorSpecLike],
) -> bytes:
    """Encode ``GET /v2/models/{m}``: name, versions, platform, inputs and outputs."""
    return _encoder.encode(
        ModelMetadata(name, versions, PLATFORM, _tensor_metadata(inputs), _tensor_metadata(outputs))
    )


def encode_server_metadata(version: str, extensions: list[str]) -> bytes:
    """Encode ``GET /v2``."""
    return _encoder.encode(ServerMetadata("ligeiro", version, extensions))


def encode_health(field: str, value: bool, name: str | None = None) -> bytes:
    """Encode ``{"live": true}``, ``{"ready": true}`` or ``{"name": m, "ready": true}``."""
    body: dict[str, str | bool] = {} if name is None else {"name": name}
    body[field] = value
    return _encoder.encode(body)


def encode_error(message: str) -> bytes:
    """Encode the V2 error body ``{"error": "..."}``."""
    return _encoder.encode(ErrorResponse(message))
