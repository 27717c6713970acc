"""The bodies ``ligeiro bench`` sends: a file, a template, or a V2 body from model metadata.

A template (``--template``) is a body with placeholders, rendered into many bodies sent
in turn, so each request carries different numbers (k6 scripts draw theirs per request):

- ``{{uniform:LO:HI}}``: a float drawn uniformly from [LO, HI), written with 4 decimals;
- ``{{int:LO:HI}}``: an integer drawn uniformly from LO to HI, both included.

``{"sepal_length": {{uniform:4.3:7.9}}, "sepal_width": {{uniform:2:4.4}}}`` renders as
``{"sepal_length": 6.0112, "sepal_width": 3.8731}``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

import msgspec

logger = logging.getLogger(__name__)

__all__ = ["payload_from_metadata", "render_template"]

_NUMBER: Final = r"\s*(-?\d+(?:\.\d+)?)\s*"
_PLACEHOLDER: Final = re.compile(r"\{\{(.*?)\}\}")
_DRAW: Final = re.compile(rf"^\s*(uniform|int)\s*:{_NUMBER}:{_NUMBER}$")

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


def render_template(template: str, count: int, seed: int = 0) -> list[bytes]:
    """``count`` bodies from ``template``, each placeholder drawn afresh (seeded).

    Raises:
        ValueError: a placeholder that is not ``uniform:LO:HI`` or ``int:LO:HI``, LO above
            HI, a count below 1, or (for a body that starts like JSON) a rendering that is
            not JSON.

    Example:
        >>> render_template('{"x": {{uniform:1:2}}, "n": {{int:3:3}}}', 2)
        [b'{"x": 1.6370, "n": 3}', b'{"x": 1.2698, "n": 3}']
    """
    import numpy as np

    if count < 1:
        raise ValueError(f"expected at least one body, got {count}")
    draws = []
    for placeholder in _PLACEHOLDER.findall(template):
        match = _DRAW.match(placeholder)
        if match is None:
            raise ValueError(
                f"template placeholder {{{{{placeholder}}}}}: expected {{{{uniform:LO:HI}}}} "
                "or {{int:LO:HI}}"
            )
        kind, low, high = match[1], float(match[2]), float(match[3])
        if low > high:
            raise ValueError(f"template placeholder {{{{{placeholder}}}}}: LO is above HI")
        draws.append((kind, low, high))
    rng = np.random.default_rng(seed)
    columns = [
        [f"{v:.4f}" for v in rng.uniform(low, high, count)]
        if kind == "uniform"
        else [str(v) for v in rng.integers(int(low), int(high), count, endpoint=True)]
        for kind, low, high in draws
    ]
    literals = _PLACEHOLDER.split(template)[::2]  # the text around the placeholders
    bodies = []
    for row in range(count):
        pieces = [literals[0]]
        for column, literal in zip(columns, literals[1:], strict=True):
            pieces += [column[row], literal]
        bodies.append("".join(pieces).encode())
    if template.lstrip()[:1] in ("{", "["):
        try:
            msgspec.json.decode(bodies[0])
        except msgspec.DecodeError as exc:
            raise ValueError(f"the template does not render JSON: {exc}") from None
    return bodies
