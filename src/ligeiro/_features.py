"""What a data scientist has in hand, as the one tensor a tabular or text model takes.

``Model.predict`` accepts, for a model whose single input is ``[-1, N]`` numbers:

- a pandas DataFrame, or a dict of columns (``{"sepal_length": [5.1, 6.7], ...}``):
  columns by name, in any order (the config's ``features`` give the model's order);
- a list of dicts of named features (``[{"sepal_length": 5.1, ...}]``), or one dict of
  scalars (one row, the seed's bare object);
- a 2-D array or list of lists, columns in the model's order.

``None`` (or NaN) is a missing value and goes to the model as NaN, for the pipeline's
imputer. For a model whose input is text: a string, or a list of strings. pandas is
never imported: a DataFrame is read through its ``columns`` and ``to_numpy``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .runtime.base import TensorSpec

__all__ = ["tensor_from_features"]

_NUMBERS = (int, float, np.integer, np.floating)


def _is_dataframe(x: object) -> bool:
    return type(x).__module__.partition(".")[0] == "pandas" and hasattr(x, "columns")


def _bad_value(value: object) -> bool:
    # bool is an int subclass, and numpy would read "1.5" as 1.5: both are refused.
    return value is not None and (
        isinstance(value, bool | np.bool_) or not isinstance(value, _NUMBERS)
    )


def _column(values: Any, dtype: np.dtype, where: str) -> np.ndarray:
    """One column of numbers as ``dtype``; ``None`` and NaN become NaN (floats only)."""
    array = values if isinstance(values, np.ndarray) else None
    if array is None or array.dtype.kind not in "iuf":
        if array is not None and array.dtype.kind == "b":
            raise InvalidInputError(f"{where}: expected numbers, got booleans")
        items = list(values)
        for row, value in enumerate(items):
            if _bad_value(value):
                raise InvalidInputError(
                    f"{where} row {row}: expected a number, got {type(value).__name__} {value!r}"
                )
        array = np.array([math.nan if v is None else v for v in items], dtype=np.float64)
    if dtype.kind in "iu" and array.dtype.kind == "f":
        missing = np.flatnonzero(~np.isfinite(array))
        if missing.size:
            raise InvalidInputError(
                f"{where} row {int(missing[0])}: a missing value, and the model takes "
                f"{dtype.name} (no NaN)"
            )
    return array.astype(dtype, copy=False)


def _from_columns(
    columns: Mapping[str, Any], features: Sequence[str], dtype: np.dtype
) -> np.ndarray:
    unknown = [str(c) for c in columns if c not in features]
    if unknown:
        raise InvalidInputError(f"unknown column {unknown[0]!r}; expected {', '.join(features)}")
    missing = [f for f in features if f not in columns]
    if missing:
        raise InvalidInputError(f"missing column {missing[0]!r}; expected {', '.join(features)}")
    arrays = [_column(columns[f], dtype, f"column {f!r}") for f in features]
    rows = {len(a) for a in arrays}
    if len(rows) > 1:
        sizes = ", ".join(f"{f!r} {len(a)}" for f, a in zip(features, arrays, strict=True))
        raise InvalidInputError(f"columns differ in length: {sizes}")
    return np.stack(arrays, axis=1) if arrays else np.empty((0, 0), dtype)


def _from_records(records: Sequence[Any], features: Sequence[str], dtype: np.dtype) -> np.ndarray:
    expected = ", ".join(features)
    for row, record in enumerate(records):
        if not isinstance(record, dict):
            raise InvalidInputError(
                f"row {row}: expected a dict of named features, got {type(record).__name__}"
            )
        for key in record:
            if key not in features:
                raise InvalidInputError(f"row {row}: unknown column {key!r}; expected {expected}")
        for feature in features:
            if feature not in record:
                raise InvalidInputError(
                    f"row {row}: missing column {feature!r}; expected {expected}"
                )
    return _from_columns({f: [r[f] for r in records] for f in features}, features, dtype)


def _from_matrix(x: Any, width: int, features: Sequence[str] | None, dtype: np.dtype) -> np.ndarray:
    array = x if isinstance(x, np.ndarray) else None
    if array is None:
        for row, values in enumerate(x):
            if not isinstance(values, list | tuple | np.ndarray):
                raise InvalidInputError(
                    f"row {row}: expected a list of {width if width > 0 else 'N'} numbers, "
                    f"got {type(values).__name__}"
                )
            if width > 0 and len(values) != width:
                raise InvalidInputError(f"row {row}: expected {width} values, got {len(values)}")
        count = len(x[0]) if len(x) else max(width, 0)
        columns = [[values[j] for values in x] for j in range(count)]
    else:
        if array.ndim != 2:
            hint = " (one row? pass [row])" if array.ndim == 1 else ""
            raise InvalidInputError(
                f"expected a 2-D array (rows, {width if width > 0 else 'N'}), "
                f"got shape {list(array.shape)}{hint}"
            )
        if width > 0 and array.shape[1] != width:
            raise InvalidInputError(f"expected {width} columns, got {array.shape[1]}")
        if array.dtype.kind in "iuf":
            return array.astype(dtype, copy=False)
        columns = list(array.T)
    names = list(features) if features is not None else [str(j) for j in range(len(columns))]
    arrays = [_column(c, dtype, f"column {n!r}") for n, c in zip(names, columns, strict=True)]
    return np.stack(arrays, axis=1) if arrays else np.empty((0, max(width, 0)), dtype)


def _texts(x: Any, spec: TensorSpec) -> np.ndarray:
    texts = [x] if isinstance(x, str) else list(x)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"row {row}: expected a string, got {type(text).__name__}")
    array = np.empty(len(texts), dtype=object)
    array[:] = texts
    return array.reshape(-1, 1) if len(spec.shape) == 2 else array


def tensor_from_features(x: Any, spec: TensorSpec, features: Sequence[str] | None) -> np.ndarray:
    """``x`` (see the module's docstring) as the array ``spec`` takes.

    Raises:
        InvalidInputError: a missing or unknown column, a value that is not a number
            (naming its column and row), or rows of the wrong width.
    """
    if spec.dtype.kind == "O":
        return _texts(x, spec)
    if len(spec.shape) != 2:
        raise InvalidInputError(
            f"predict takes tables for a [-1, N] input; input {spec.name!r} is "
            f"{list(spec.shape)}: use infer({{{spec.name!r}: array}})"
        )
    width = spec.shape[1] if spec.shape[1] > 0 else (len(features) if features else -1)
    named = (
        _is_dataframe(x)
        or isinstance(x, dict)
        or (isinstance(x, list | tuple) and len(x) > 0 and isinstance(x[0], dict))
    )
    if named and features is None:
        raise InvalidInputError(
            "named columns need 'features' in the model's config.toml; "
            f"pass rows of {width if width > 0 else 'N'} numbers instead"
        )
    if _is_dataframe(x):
        columns = {str(c): x[c].to_numpy() for c in x.columns}
        return _from_columns(columns, features or (), spec.dtype)
    if isinstance(x, dict):
        if all(not isinstance(v, list | tuple | np.ndarray) for v in x.values()):
            return _from_records([x], features or (), spec.dtype)  # one row
        return _from_columns(x, features or (), spec.dtype)
    if isinstance(x, list | tuple) and len(x) > 0 and isinstance(x[0], dict):
        return _from_records(x, features or (), spec.dtype)
    if isinstance(x, list | tuple | np.ndarray):
        if len(x) == 0:
            raise InvalidInputError("no rows given")
        return _from_matrix(x, width, features, spec.dtype)
    raise InvalidInputError(
        "expected a DataFrame, a dict of columns, a list of dicts or a 2-D array, "
        f"got {type(x).__name__}"
    )
