"""The check every inference path makes: the inputs fit the model's signature.

The engine (for the servers) and ``ligeiro.load``'s ``Model`` (in process) both run it,
so a request gets the same message whichever way it comes in. ``decode_text`` then
gives a runtime that reads BYTES as text (ONNX Runtime's string tensors) ``str``
elements: the protocols hand BYTES over as the bytes they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .registry import ModelVersion

__all__ = ["check_inputs", "decode_text"]


def check_inputs(model: ModelVersion, inputs: Mapping[str, np.ndarray]) -> None:
    """Check that ``inputs`` are exactly the model's inputs, in dtype and shape.

    Raises:
        InvalidInputError: an input is unknown or missing, or of the wrong dtype or shape.
    """
    specs = model.inputs
    if inputs.keys() != specs.keys():
        raise _names_error(model.name, inputs, specs)
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


def _names_error(
    model: str, inputs: Mapping[str, np.ndarray], specs: Mapping[str, object]
) -> InvalidInputError:
    """The error for inputs that are not the model's: which are unknown, which missing.

    Apart from ``check_inputs``: its comprehensions would make the names they read
    closure cells, created on every call of the function they sit in (1 % of a request).
    """
    unknown = [n for n in inputs if n not in specs]
    missing = [n for n in specs if n not in inputs]
    parts = [f"unknown input {n!r}" for n in unknown] + [f"missing input {n!r}" for n in missing]
    return InvalidInputError(f"model {model!r}: {', '.join(parts)}; it takes {', '.join(specs)}")


def decode_text(model: ModelVersion, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """``inputs`` with the BYTES elements the model's runtime reads as text decoded.

    ONNX Runtime's string tensors hold ``str`` (its Python binding would turn ``bytes``
    into ``"b'...'"``); a Python model takes the bytes as they came. Run per request,
    before batching, so that one request's bad bytes fail only that request.

    Raises:
        InvalidInputError: an element is not valid UTF-8.
    """
    decoded: dict[str, np.ndarray] | None = None
    for name in model.runtime.text_inputs:
        array = inputs.get(name)
        if array is None or array.dtype.kind != "O":
            continue
        flat = array.reshape(-1)
        if not any(type(value) is bytes for value in flat):
            continue
        texts = np.empty(flat.size, dtype=object)
        for i, value in enumerate(flat):
            if type(value) is bytes:
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InvalidInputError(
                        f"input {name!r}: BYTES element {i} is not valid UTF-8: {exc.reason} "
                        f"at byte {exc.start}"
                    ) from None
            texts[i] = value
        if decoded is None:
            decoded = dict(inputs)
        decoded[name] = texts.reshape(array.shape)
    return inputs if decoded is None else decoded
