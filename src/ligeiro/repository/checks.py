"""The check every inference path makes: the inputs fit the model's signature.

The engine (for the servers) and ``ligeiro.load``'s ``Model`` (in process) both run it,
so a request gets the same message whichever way it comes in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np

    from .registry import ModelVersion

__all__ = ["check_inputs"]


def check_inputs(model: ModelVersion, inputs: Mapping[str, np.ndarray]) -> None:
    """Check that ``inputs`` are exactly the model's inputs, in dtype and shape.

    Raises:
        InvalidInputError: an input is unknown or missing, or of the wrong dtype or shape.
    """
    specs = model.inputs
    if inputs.keys() != specs.keys():
        unknown = [n for n in inputs if n not in specs]
        missing = [n for n in specs if n not in inputs]
        parts = [f"unknown input {n!r}" for n in unknown] + [
            f"missing input {n!r}" for n in missing
        ]
        raise InvalidInputError(
            f"model {model.name!r}: {', '.join(parts)}; it takes {', '.join(specs)}"
        )
    for name, array in inputs.items():
        spec = specs[name]
        if array.dtype != spec.dtype and not (spec.dtype.kind == "O" and array.dtype.kind in "OUS"):
            expected = "string" if spec.dtype.kind == "O" else spec.dtype.name
            raise InvalidInputError(
                f"model {model.name!r} input {name!r}: expected dtype {expected}, "
                f"got {array.dtype.name}"
            )
        if not spec.accepts_shape(array.shape):
            hint = " (missing batch axis?)" if len(array.shape) + 1 == len(spec.shape) else ""
            raise InvalidInputError(
                f"model {model.name!r} input {name!r}: expected shape {list(spec.shape)}, "
                f"got {list(array.shape)}{hint}"
            )
