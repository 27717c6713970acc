"""Triton's raw tensor layout: little-endian elements, BYTES each a length then its bytes.

The layout of the REST binary extension (``codec.py``) and of gRPC's
``raw_input_contents`` / ``raw_output_contents`` (``grpc_codec.py``).
"""

from __future__ import annotations

import math
import struct
import sys

import numpy as np

from ..errors import InvalidInputError
from .datatypes import DATATYPES, check_shape, dtype_of

__all__ = ["array_from_raw", "fixed_layout", "is_plain", "raw_from_array"]

_LENGTH = struct.Struct("<I")
_BIG_ENDIAN_HOST = sys.byteorder == "big"  # the wire's tensors are little-endian


def _bytes_elements(raw: bytes | memoryview, where: str, text: bool) -> np.ndarray:
    """BYTES in binary form: each element a 4-byte little-endian length, then its bytes.

    With ``text`` the elements are decoded from UTF-8 (``str``), else they stay ``bytes``:
    V2 BYTES are arbitrary bytes (a JPEG, a WAV), and a model that reads text has them
    decoded by the engine (``repository.checks.decode_text``).
    """
    elements: list[bytes | str] = []
    offset, end = 0, len(raw)
    while offset < end:
        if end - offset < 4:
            raise InvalidInputError(
                f"{where}BYTES element {len(elements)} is cut short: "
                f"{end - offset} bytes left where a 4-byte length was expected"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if length > end - offset:
            raise InvalidInputError(
                f"{where}BYTES element {len(elements)} says {length} bytes, "
                f"only {end - offset} are left"
            )
        element = bytes(raw[offset : offset + length])
        if text:
            try:
                elements.append(element.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InvalidInputError(
                    f"{where}BYTES element {len(elements)} is not valid UTF-8: {exc.reason} "
                    f"at byte {exc.start}"
                ) from None
        else:
            elements.append(element)
        offset += length
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array


def array_from_raw(
    raw: bytes | memoryview,
    datatype: str,
    shape: list[int],
    where: str = "",
    what: str = "data",
    *,
    text: bool = True,
) -> np.ndarray:
    r"""Read a tensor in Triton's raw layout: little-endian elements, BYTES length-prefixed.

    The layout of the REST binary extension and of gRPC's ``raw_input_contents``.
    Fixed-size datatypes are read in place (``np.frombuffer``), copied only when the
    bytes do not sit at an offset their dtype can be read from aligned.

    Args:
        raw: the tensor's bytes.
        datatype: its V2 datatype.
        shape: its V2 shape.
        where: a prefix for error messages, such as ``"input 'x': "``.
        what: what the bytes are called in error messages (``"binary data"``).
        text: BYTES elements decoded from UTF-8 (``str``); ``False`` keeps them
            ``bytes``, as a request's inputs are (the engine decodes those a model
            reads as text). True by default for the callers that still expect text
            (grpc_codec.py's, issue 16).

    Raises:
        InvalidInputError: unknown datatype, a negative dimension, a size that is not
            a whole number of elements, or an element count that does not match ``shape``.

    Example:
        >>> array_from_raw(b"\x01\x00\x02\x00", "INT16", [1, 2])
        array([[1, 2]], dtype=int16)
    """
    dtype = dtype_of(datatype, where)
    check_shape(shape, dtype, where)
    kind = dtype.kind
    count = math.prod(shape)
    if kind == "O":
        array = _bytes_elements(raw, where, text)
        if array.size != count:
            raise InvalidInputError(
                f"{where}shape {shape} holds {count} elements, {what} has {array.size}"
            )
        return array.reshape(shape)
    size, itemsize = len(raw), dtype.itemsize
    if size % itemsize:
        raise InvalidInputError(
            f"{where}{size} bytes of {what} are not a whole number of {datatype} "
            f"elements ({itemsize} bytes each)"
        )
    if size != count * itemsize:
        raise InvalidInputError(
            f"{where}shape {shape} holds {count} elements, {what} has {size // itemsize}"
        )
    if kind == "b":
        array = np.frombuffer(raw, dtype=np.uint8)
        if array.size and array.max() > 1:
            raise InvalidInputError(f"{where}BOOL bytes must be 0 or 1, got {int(array.max())}")
        return array.view(np.bool_).reshape(shape)
    # One numpy call: a view of the bytes in the tensor's shape (a little-endian host).
    if _BIG_ENDIAN_HOST:
        return np.ndarray(shape, dtype.newbyteorder("<"), raw).astype(dtype)
    array = np.ndarray(shape, dtype, raw)
    return array if array.flags.aligned else array.copy()


def fixed_layout(datatype: str, shape: list[int]) -> tuple[np.dtype, int] | None:
    """The dtype and byte size of a tensor that ``array_from_raw`` reads as a plain view.

    For a numeric datatype and a shape an array can take, ``array_from_raw`` checks
    nothing but the size of the bytes; a caller that meets the same datatype and shape
    again (gRPC's scanner, which keeps each input's description) can view bytes of this
    size itself, and leave any other size to ``array_from_raw`` and its errors. None for
    BYTES and BOOL (their bytes are read element by element), an unknown datatype, a
    shape ``check_shape`` refuses, or a big-endian host.
    """
    dtype = DATATYPES.get(datatype)
    if dtype is None or dtype.kind in "Ob" or _BIG_ENDIAN_HOST:
        return None
    try:
        check_shape(shape, dtype)
    except InvalidInputError:
        return None
    return dtype, math.prod(shape) * dtype.itemsize


def is_plain(dtype: np.dtype) -> bool:
    """Whether ``raw_from_array`` of an array of this dtype is its ``tobytes()``: numbers
    in little-endian order, on a little-endian host."""
    return dtype.kind not in "OUS" and not _BIG_ENDIAN_HOST and dtype.byteorder != ">"


def raw_from_array(array: np.ndarray) -> bytes:
    """Write a tensor in Triton's raw layout (the inverse of ``array_from_raw``)."""
    if array.dtype.kind in "OUS":
        parts = []
        for value in array.ravel().tolist():
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(_LENGTH.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    if _BIG_ENDIAN_HOST or array.dtype.byteorder == ">":
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return array.tobytes()  # C order, whatever the array's strides
