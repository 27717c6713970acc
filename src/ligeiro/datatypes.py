"""The table between V2 datatype names and numpy dtypes: the only place that knows it.

It sits below both ``protocol`` (the wire's tensors) and ``repository`` (config.toml
declares tensors with the same names), so that neither imports the other for it;
``protocol.datatypes`` re-exports it for the codecs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidInputError

__all__ = ["DATATYPES", "check_shape", "datatype_of", "dtype_of", "fits_without_overflow"]

_MAX_BYTES = 2**63 - 1  # what numpy can address; past it, "array is too big"

# V2 / Open Inference Protocol tensor datatypes that map onto numpy. BYTES elements
# are Python ``str``/``bytes`` in an object array (what ONNX Runtime takes for strings).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in DATATYPES.items()}


def dtype_of(datatype: str, where: str = "") -> np.dtype:
    """Return the numpy dtype for a V2 datatype name.

    Raises:
        InvalidInputError: the name is not a V2 datatype ligeiro supports.
    """
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        known = ", ".join(DATATYPES)
        raise InvalidInputError(
            f"{where}unknown datatype {datatype!r}; expected one of {known}"
        ) from None


def datatype_of(dtype: np.dtype) -> str:
    """Return the V2 datatype name of a numpy dtype (``<U``/``S`` strings are BYTES)."""
    name = _NAMES.get(dtype)
    if name is None:
        if dtype.kind in "USO":
            return "BYTES"
        raise ValueError(f"numpy dtype {dtype} has no V2 datatype")
    return name


def check_shape(shape: list[int], dtype: np.dtype, where: str = "") -> None:
    """Refuse a shape no array can take: a negative dimension, or one too large.

    A tensor with a zero dimension holds no element, but numpy still refuses it when
    its other dimensions times the element size pass 2**63 - 1 (``[0, 2**62]`` of FP32).

    Raises:
        InvalidInputError: a negative dimension, or a shape too large for any array.
    """
    if not shape:
        return
    if min(shape) < 0:
        raise InvalidInputError(f"{where}shape {shape} has a negative dimension")
    size = dtype.itemsize
    for dimension in shape:
        if dimension:
            size *= dimension
    if size > _MAX_BYTES:
        raise InvalidInputError(
            f"{where}shape {shape} is too large: its non-zero dimensions times "
            f"{dtype.itemsize} bytes per element pass 2**63 - 1 bytes"
        )


# The largest finite value of each float dtype narrower than a Python float.
_FLOAT_BOUNDS = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32)}


def fits_without_overflow(values: list[Any], dtype: np.dtype) -> bool:
    """Whether the JSON numbers ``values`` become ``dtype`` without a float overflow.

    Only FP16 and FP32 can overflow from a Python float (1e39 as FP32); for them the
    largest and smallest value are compared with the dtype's range. ``False`` when it
    cannot tell (a ``None`` among them, no values): the caller then converts under
    ``np.errstate(over="raise")``, which costs ~1 µs a call and is skipped otherwise.
    """
    bound = _FLOAT_BOUNDS.get(dtype)
    if bound is None:
        return True
    try:
        return max(values) <= bound and -bound <= min(values)
    except (TypeError, ValueError):
        return False
