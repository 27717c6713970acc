"""The request ``ligeiro bench`` sends: a V2 JSON body from a file or from model metadata."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

logger = logging.getLogger(__name__)

__all__ = ["payload_from_metadata"]

_FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})
_INTS = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})


def _shape(name: str, dims: list[int], batch_size: int) -> list[int]:
    """Batch axis (a leading -1) → ``batch_size``; other -1 axes → 1."""
    if batch_size != 1 and (not dims or dims[0] != -1):
        raise ValueError(
            f"input {name!r}: --batch-size {batch_size} needs a leading -1 axis, got {dims}"
        )
    return [batch_size if i == 0 and d == -1 else (1 if d == -1 else d) for i, d in enumerate(dims)]


def payload_from_metadata(metadata: dict[str, Any], batch_size: int = 1, seed: int = 0) -> bytes:
    """A V2 JSON infer request for the inputs that ``GET /v2/models/MODEL`` describes.

    Floats are seeded random normal, integers small (0..9), booleans random, BYTES ``"x"``.

    Args:
        metadata: the model metadata (``inputs``: name, datatype, shape).
        batch_size: rows on the leading -1 axis.
        seed: the random generator's seed.

    Returns:
        The request body.

    Raises:
        ValueError: no inputs, an unknown datatype, or a batch size without a batch axis.

    Example:
        >>> meta = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}
        >>> payload_from_metadata(meta)[:40]
        b'{"inputs":[{"name":"x","shape":[1,2],"da'
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    inputs = []
    for spec in metadata.get("inputs") or []:
        name, datatype = spec["name"], spec["datatype"]
        shape = _shape(name, [int(d) for d in spec["shape"]], batch_size)
        count = int(np.prod(shape)) if shape else 1
        data: list[Any]
        if datatype in _FLOATS:
            data = [round(float(v), 4) for v in rng.standard_normal(count)]
        elif datatype in _INTS:
            data = [int(v) for v in rng.integers(0, 10, count)]
        elif datatype == "BOOL":
            data = [bool(v) for v in rng.integers(0, 2, count)]
        elif datatype == "BYTES":
            data = ["x"] * count
        else:
            raise ValueError(f"input {name!r}: cannot make data of datatype {datatype!r}")
        inputs.append({"name": name, "shape": shape, "datatype": datatype, "data": data})
    if not inputs:
        raise ValueError(f"the metadata lists no inputs: {metadata!r}")
    return msgspec.json.encode({"inputs": inputs})
