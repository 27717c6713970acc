"""The table between V2 datatype names and numpy dtypes: the only place that knows it."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

__all__ = ["DATATYPES", "datatype_of", "dtype_of"]

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
