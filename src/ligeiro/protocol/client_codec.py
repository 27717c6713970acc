"""The client's side of V2 JSON: numpy → request body, response body → numpy."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from ..errors import InvalidInputError
from .datatypes import datatype_of, dtype_of

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["InferAnswer", "decode_infer_response", "encode_infer_request"]

_encoder = msgspec.json.Encoder()


class _Output(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class InferAnswer(msgspec.Struct):
    """A decoded V2 response (``outputs`` are numpy arrays once decoded)."""

    model_name: str
    outputs: list[_Output]
    model_version: str | None = None
    id: str | None = None


_decoder = msgspec.json.Decoder(InferAnswer)


def _data(array: np.ndarray) -> list[Any]:
    data: list[Any] = array.ravel().tolist()
    if array.dtype.kind in "OS" and data and isinstance(data[0], bytes):
        data = [v.decode() if isinstance(v, bytes) else v for v in data]
    return data


def encode_infer_request(
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    request_id: str | None = None,
    timeout_us: int | None = None,
) -> bytes:
    """The JSON body of ``POST /v2/models/{m}/infer`` for named numpy inputs.

    ``timeout_us`` is V2's ``timeout`` parameter: how long the request may wait in the
    server's queue, in microseconds.
    """
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array.dtype),
                "data": _data(array),
            }
            for name, array in inputs.items()
        ]
    }
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    if request_id is not None:
        body["id"] = request_id
    if timeout_us is not None:
        body["parameters"] = {"timeout": timeout_us}
    return _encoder.encode(body)


def decode_infer_response(body: bytes) -> tuple[InferAnswer, dict[str, np.ndarray]]:
    """Decode a V2 JSON response into its header and its outputs as arrays.

    Raises:
        InvalidInputError: the body is not a V2 inference response.
    """
    try:
        answer = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidInputError(f"not a V2 inference response: {exc}") from None
    arrays = {}
    for output in answer.outputs:
        dtype = dtype_of(output.datatype, f"output {output.name!r}: ")
        array = np.array(output.data, dtype=dtype)
        if array.size != math.prod(output.shape):
            raise InvalidInputError(
                f"output {output.name!r}: shape {output.shape} but {array.size} values"
            )
        arrays[output.name] = array.reshape(output.shape)
    return answer, arrays
