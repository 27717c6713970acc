"""From a chunk of file rows to model inputs, and from model outputs to prediction columns.

A row whose feature value is missing (null) or does not parse as the input's number
type is bad: with ``on_error="fail"`` the first one raises ``InvalidInputError`` naming
its file, row and column; with ``"reject"`` bad rows leave the chunk as a rejects table
(``file, row, column, error`` and the row's values as text) and the rest are scored.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..engine import Engine
    from ..repository.registry import ModelVersion
    from .formats import Chunk

__all__ = ["OnError", "Scored", "Scorer", "rejects_schema"]

logger = logging.getLogger(__name__)

OnError = Literal["fail", "reject"]
_BISECT_BELOW = 16  # below this many values, find bad ones one by one


@dataclass(frozen=True, slots=True)
class Scored:
    """A chunk's result: the output rows, and the rejected rows (None when there are none)."""

    table: pa.Table
    rejects: pa.Table | None


def rejects_schema(columns: Sequence[str]) -> pa.Schema:
    """The rejects file's columns: where, why, then the row's values as text."""
    fields = [
        pa.field("file", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("column", pa.string()),
        pa.field("error", pa.string()),
    ]
    return pa.schema(fields + [pa.field(c, pa.string()) for c in columns])


def _arrow_type(dtype: np.dtype) -> pa.DataType:
    if dtype.kind not in "biuf":
        raise InvalidInputError(
            f"ligeiro score feeds numeric inputs only; the model takes {dtype.name}"
        )
    return pa.from_numpy_dtype(dtype)


def _cast(values: pa.Array, target: pa.DataType) -> pa.Array:
    """``values`` as ``target``; text goes through float64 for floats, as numpy would."""
    if pa.types.is_floating(target):
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            values = pc.cast(values, pa.float64())
        # Narrowing float64 to float32 rounds, as numpy's astype does; never an error.
        return pc.cast(values, target, safe=False)
    return pc.cast(values, target)


def _flat(values: np.ndarray, rows: int) -> np.ndarray:
    """An output as ``[rows, elements]`` (also when there are no rows)."""
    return values.reshape(rows, math.prod(values.shape[1:]))


def _bad_values(values: pa.Array, target: pa.DataType) -> list[int]:
    """Indices of the values that do not cast to ``target``, found by bisection."""
    try:
        _cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    else:
        return []
    if len(values) <= _BISECT_BELOW:
        bad = []
        for i in range(len(values)):
            try:
                _cast(values.slice(i, 1), target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                bad.append(i)
        return bad
    half = len(values) // 2
    right = _bad_values(values.slice(half), target)
    return _bad_values(values.slice(0, half), target) + [half + i for i in right]


@final
class Scorer:
    """Scores chunks with one model through an ``Engine``.

    Args:
        engine: the engine that runs the model (``Engine.run``).
        model: the loaded version.
        columns: the file columns that feed the model: for one ``[-1, N]`` input, its N
            columns in order; for several ``[-1]``/``[-1, 1]`` inputs, one per input in
            the model's order.
        keep: columns copied to the output unchanged, before the predictions.
        on_error: ``"fail"`` raises on the first bad row, ``"reject"`` sets it aside.
        nulls_as_nan: feed a missing (null) value to a float input as NaN (for models
            with an imputer) instead of calling the row bad.

    Raises:
        InvalidInputError: the model's inputs cannot be fed from columns, or the column
            count is wrong, or a kept column clashes with a prediction column.
    """

    def __init__(
        self,
        engine: Engine,
        model: ModelVersion,
        columns: Sequence[str],
        keep: Sequence[str],
        *,
        on_error: OnError = "fail",
        nulls_as_nan: bool = False,
    ) -> None:
        self.engine = engine
        self.model = model
        self.columns = list(columns)
        self.keep = list(keep)
        self.on_error = on_error
        self.nulls_as_nan = nulls_as_nan
        specs = list(model.inputs.values())
        if len(specs) == 1 and len(specs[0].shape) == 2 and specs[0].shape[1] != 1:
            spec = specs[0]
            if spec.shape[1] not in (-1, len(self.columns)):
                raise InvalidInputError(
                    f"model {model.name!r} input {spec.name!r} takes {spec.shape[1]} columns; "
                    f"{len(self.columns)} given ({', '.join(self.columns)})"
                )
            self._matrix: str | None = spec.name
            self._types = [_arrow_type(spec.dtype)] * len(self.columns)
        else:
            flat = [s for s in specs if len(s.shape) == 1 or s.shape[1:] == (1,)]
            if len(flat) != len(specs) or len(specs) != len(self.columns):
                shapes = ", ".join(f"{s.name} {list(s.shape)}" for s in specs)
                raise InvalidInputError(
                    f"model {model.name!r} has inputs {shapes}: ligeiro score feeds one "
                    f"[-1, N] input from N columns, or one column per [-1, 1] input; "
                    f"{len(self.columns)} columns given ({', '.join(self.columns)})"
                )
            self._matrix = None
            self._types = [_arrow_type(s.dtype) for s in specs]
        self._names = self._prediction_names()
        clash = [c for c in self.keep if c in self._names]
        if clash:
            raise InvalidInputError(
                f"kept column {clash[0]!r} has the name of a prediction column; "
                f"predictions are {', '.join(self._names)}"
            )
        self._labels = pa.array(model.config.labels) if model.config.labels else None

    @property
    def read_columns(self) -> list[str]:
        """The columns to read from each file: features, then kept ones."""
        return list(dict.fromkeys([*self.columns, *self.keep]))

    def _classes(self) -> list[str]:
        model = self.model
        if model.config.labels:
            return list(model.config.labels)
        assert model.probability_output is not None
        count = model.outputs[model.probability_output].shape[-1]
        return [str(i) for i in range(max(count, 0))]

    def _is_classifier(self) -> bool:
        return self.model.label_output is not None and self.model.probability_output is not None

    def _prediction_names(self) -> list[str]:
        """Prediction column names as far as the signature tells (for the clash check)."""
        if self._is_classifier():
            names = ["label"] + (["label_name"] if self.model.config.labels else [])
            return names + [f"probability_{c}" for c in self._classes()]
        return list(self.model.outputs)

    def score(self, chunk: Chunk) -> Scored:
        """Score the good rows of ``chunk``; set aside or raise on the bad ones.

        Raises:
            InvalidInputError: a bad row with ``on_error="fail"`` (file, row, column).
            InferenceError: the runtime failed.
        """
        table = chunk.table.combine_chunks()
        bad: dict[int, tuple[str, str]] = {i: (c, m) for i, c, m in reversed(chunk.errors)}
        converted: list[pa.Array | None] = []
        for name, target in zip(self.columns, self._types, strict=True):
            values = table.column(name).chunk(0) if table.num_rows else pa.array([], target)
            if values.null_count and not (self.nulls_as_nan and pa.types.is_floating(target)):
                for row in np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False)):
                    bad.setdefault(int(row), (name, "missing value"))
            try:
                cast = _cast(values, target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                if not (pa.types.is_string(values.type) or pa.types.is_integer(values.type)
                        or pa.types.is_floating(values.type)):  # fmt: skip
                    raise InvalidInputError(
                        f"{chunk.file}: column {name!r} holds {values.type}, not numbers"
                    ) from None
                for i in _bad_values(values, target):
                    text = values[i].as_py()
                    bad.setdefault(i, (name, f"expected a number ({target}), got {text!r}"))
                cast = None
            converted.append(cast)  # None only when some rows are bad: redone below
        rejects = None
        if bad:
            first = min(bad)
            if self.on_error == "fail":
                column, message = bad[first]
                where = f", column {column!r}" if column else ""
                raise InvalidInputError(f"{chunk.file}: row {chunk.row(first)}{where}: {message}")
            rejects = self._rejects(chunk, table, bad)
            keep_mask = np.ones(table.num_rows, dtype=bool)
            keep_mask[list(bad)] = False
            mask = pa.array(keep_mask)
            table = table.filter(mask)
            converted = [
                _cast(table.column(n).chunk(0) if table.num_rows else pa.array([], t), t)
                for n, t in zip(self.columns, self._types, strict=True)
            ]
        return Scored(self._predict(table, [c for c in converted if c is not None]), rejects)

    def _rejects(self, chunk: Chunk, table: pa.Table, bad: dict[int, tuple[str, str]]) -> pa.Table:
        rows = sorted(bad)
        taken = table.take(pa.array(rows, pa.int64()))
        columns: dict[str, pa.Array] = {
            "file": pa.array([chunk.file] * len(rows), pa.string()),
            "row": pa.array([chunk.row(i) for i in rows], pa.int64()),
            "column": pa.array([bad[i][0] for i in rows], pa.string()),
            "error": pa.array([bad[i][1] for i in rows], pa.string()),
        }
        for name in self.read_columns:
            values = taken.column(name)
            columns[name] = values if values.type == pa.string() else pc.cast(values, pa.string())
        return pa.table(columns)

    def _predict(self, table: pa.Table, converted: list[pa.Array]) -> pa.Table:
        model = self.model
        rows = table.num_rows
        if self._matrix is not None:
            spec = model.inputs[self._matrix]
            matrix = np.empty((rows, len(converted)), dtype=spec.dtype)
            for j, values in enumerate(converted):
                matrix[:, j] = values.to_numpy(zero_copy_only=False)
            inputs = {self._matrix: matrix}
        else:
            inputs = {}
            for spec, values in zip(model.inputs.values(), converted, strict=True):
                array = values.to_numpy(zero_copy_only=False).astype(spec.dtype, copy=False)
                inputs[spec.name] = array.reshape((rows, *(1,) * (len(spec.shape) - 1)))
        outputs = self.engine.run(model, inputs).outputs
        columns: dict[str, pa.Array | pa.ChunkedArray] = {n: table.column(n) for n in self.keep}
        if self._is_classifier():
            assert model.label_output is not None
            assert model.probability_output is not None
            label = _flat(outputs[model.label_output], rows)[:, 0]
            columns["label"] = pa.array(label)
            if self._labels is not None:
                # A dictionary column: no string copied per row, and Parquet stores it
                # dictionary-encoded as it is.
                columns["label_name"] = pa.DictionaryArray.from_arrays(label, self._labels)
            probabilities = np.ascontiguousarray(_flat(outputs[model.probability_output], rows).T)
            classes = self._classes() if self._labels is not None else None
            if classes is None or len(classes) != len(probabilities):
                classes = [str(i) for i in range(len(probabilities))]
            for name, values in zip(classes, probabilities, strict=True):
                columns[f"probability_{name}"] = pa.array(values)
        else:
            for name, values in outputs.items():
                flat = _flat(values, rows)
                if flat.shape[1] == 1:
                    columns[name] = pa.array(flat[:, 0])
                else:
                    for i, column in enumerate(np.ascontiguousarray(flat.T)):
                        columns[f"{name}_{i}"] = pa.array(column)
        return pa.table(columns)
