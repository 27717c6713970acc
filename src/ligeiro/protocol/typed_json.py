"""The common V2 JSON request, decoded with its numbers typed: msgspec checks them in C.

Most requests a model gets have one shape: each input's ``data`` a flat list of
numbers of the datatype the model takes, no tensor ``parameters``. For a model whose
inputs share one numeric dtype, such a request is decoded against a struct whose
``data`` is typed with that dtype's kind and range (``list[float]`` within FP32's
range, ``list[int]`` within INT64's…): msgspec refuses a string, a boolean, a null or a
value out of range as it parses, and each input is then one ``np.array`` call. The
generic decode (``codec.decode_infer_request``) checks the same element by element in
Python; end to end that measured ~5 µs of a ~37 µs request (docs/adr/0009).

Whatever does not fit (nested data, tensor parameters, another datatype, a repeated
name, an empty or scalar tensor, a dimension under 1, a shape that does not match its
data, a value of the wrong kind or out of range, malformed JSON) is ``None`` here: the
caller decodes it the generic way, which accepts what it accepts and words every error
as before.

``:predict``'s common shape, the seed's bare object of named numbers (or
``{"instances": [...]}`` of such objects), is decoded the same way against a struct of
the model's features (``decode_typed_features``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from .datatypes import datatype_of
from .messages import RequestOutput

__all__ = ["TypedRequest", "decode_typed", "decode_typed_features"]

# Built on first use, one per numeric dtype (at most 11); None for BOOL and BYTES.
_DECODERS: dict[np.dtype, msgspec.json.Decoder[Any] | None] = {}
# :predict's, per model's features and dtype: (the bare object's, the instances').
_FEATURE_DECODERS: dict[tuple[tuple[str, ...], np.dtype], tuple[Any, Any] | None] = {}
_MOST_FEATURE_DECODERS = 256  # past it (models reloaded with new features), start again


class TypedRequest(msgspec.Struct, gc=False):
    """``InferRequest`` with typed inputs (see ``_decoder``): the fields the codec reads."""

    inputs: list[Any]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestOutput] | None = None


def _element(dtype: np.dtype) -> Any:
    """The msgspec type of one JSON number of ``dtype``: its kind and its range."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return Annotated[int, msgspec.Meta(ge=int(info.min), le=int(info.max))]
    if dtype.itemsize >= 8:
        return float
    largest = float(np.finfo(dtype).max)  # 1e39 is no FP32: refused, not inf
    return Annotated[float, msgspec.Meta(ge=-largest, le=largest)]


def _decoder(dtype: np.dtype) -> msgspec.json.Decoder[Any] | None:
    decoder = None
    if dtype.kind in "iuf":
        # Checked in C as msgspec parses: the datatype is the model's, every dimension
        # at least 1, the data not empty, no unknown field (``parameters`` above all:
        # binary data), so that nothing the generic decode reads is skipped.
        datatype = datatype_of(dtype)
        dimensions = Annotated[list[Annotated[int, msgspec.Meta(ge=1)]], msgspec.Meta(min_length=1)]
        data = Annotated[list[_element(dtype)], msgspec.Meta(min_length=1)]  # type: ignore[misc]
        tensor = msgspec.defstruct(
            f"Typed{datatype}Input",
            [("name", str), ("shape", dimensions),
             ("datatype", Literal[datatype]), ("data", data)],  # type: ignore[valid-type]
            forbid_unknown_fields=True,
            gc=False,
        )  # fmt: skip
        request = msgspec.defstruct(
            f"Typed{datatype}Request", [("inputs", list[tensor])], bases=(TypedRequest,)
        )
        decoder = msgspec.json.Decoder(request)
    _DECODERS[dtype] = decoder
    return decoder


def decode_typed(
    body: bytes | memoryview, dtype: np.dtype
) -> tuple[dict[str, np.ndarray], TypedRequest] | None:
    """The request's inputs (and its message) when it has the common shape for ``dtype``;
    ``None`` when it does not: the caller then decodes it the generic way."""
    decoder = _DECODERS.get(dtype, False)
    if decoder is False:
        decoder = _decoder(dtype)
    if decoder is None:
        return None
    try:
        message: TypedRequest = decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    inputs: dict[str, np.ndarray] = {}
    for tensor in message.inputs:
        data, shape, name = tensor.data, tensor.shape, tensor.name
        if name in inputs:
            return None
        if len(shape) == 1:
            if shape[0] != len(data):
                return None
            inputs[name] = np.array(data, dtype)
        elif math.prod(shape) != len(data):
            return None
        else:
            inputs[name] = np.array(data, dtype).reshape(shape)
    return inputs, message


def _feature_decoders(features: tuple[str, ...], dtype: np.dtype) -> tuple[Any, Any] | None:
    key = (features, dtype)
    if key in _FEATURE_DECODERS:
        return _FEATURE_DECODERS[key]
    decoders = None
    if dtype.kind in "iuf":
        # A missing feature, or null, is None: NaN in a float array, for the imputers
        # (an integer one has no NaN: the generic decode words that error).
        fields = [(f"f{i}", _element(dtype)) for i in range(len(features))]
        if dtype.kind == "f":
            fields = [(name, kind | None, None) for name, kind in fields]
        row = msgspec.defstruct(
            "Features",
            fields,
            rename={f"f{i}": name for i, name in enumerate(features)},
            forbid_unknown_fields=True,
            gc=False,
        )
        many = msgspec.defstruct(
            "Instances", [("instances", list[row])], forbid_unknown_fields=True  # type: ignore[valid-type]
        )
        decoders = msgspec.json.Decoder(row), msgspec.json.Decoder(many)
    if len(_FEATURE_DECODERS) >= _MOST_FEATURE_DECODERS:
        _FEATURE_DECODERS.clear()
    _FEATURE_DECODERS[key] = decoders
    return decoders


def decode_typed_features(
    body: bytes, features: list[str], dtype: np.dtype
) -> tuple[np.ndarray, bool] | None:
    """``:predict``'s common shape (protocol/predict.py): the seed's bare object of named
    numbers, or ``{"instances": [...]}`` of such objects, as the ``dtype`` matrix of
    their rows in ``features`` order, and whether it was one bare object; ``None`` for
    anything else (a list instance, an unknown feature, a value not a number or null or
    out of range, malformed JSON), which the caller decodes the generic way."""
    decoders = _feature_decoders(tuple(features), dtype)
    if decoders is None:
        return None
    single = b'"instances"' not in body
    try:
        if single:
            rows = [msgspec.structs.astuple(decoders[0].decode(body))]
        else:
            rows = [msgspec.structs.astuple(row) for row in decoders[1].decode(body).instances]
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not rows:
        return None
    return np.array(rows, dtype), single
