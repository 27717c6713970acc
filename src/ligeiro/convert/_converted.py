"""What every converter hands back, and the tabular inputs sklearn and the boosters share.

A converter turns a loaded model and the sample into a ``ConvertedModel``: the ONNX
bytes, the sample as ONNX Runtime's feed, the original model's answers on that same
sample (named like the ONNX outputs), and what ``config.toml`` should say.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConversionError

if TYPE_CHECKING:
    import onnx
    import pandas as pd

__all__ = ["ConvertedModel", "TabularInputs", "rename_outputs", "tabular_inputs"]

logger = logging.getLogger(__name__)

# The names the server and skl2onnx (with ZipMap) agree on; see repository/config.py.
LABEL_OUTPUT = "output_label"
PROBABILITY_OUTPUT = "output_probability"
FLOAT_INPUT = "float_input"


@dataclass
class ConvertedModel:
    """An ONNX model with the evidence to check it against its original.

    Attributes:
        onnx_model: the converted graph.
        feed: the sample as ONNX Runtime inputs, by input name.
        reference: the original model's outputs on the same sample, by ONNX output name.
        features: column names of the single ``float_input`` (``config.toml``'s
            ``features``), or ``None`` (per-column inputs, or unnamed columns).
        labels: class names indexed by the label output's value, or ``None``.
        label_output: the output compared for equality (class labels), if any.
        probability_output: the ``[N, classes]`` probabilities, if any.
        relative_outputs: outputs whose tolerance scales with their magnitude
            (regression values: float32 keeps about 7 significant digits).
        notes: lines for the report.
    """

    onnx_model: onnx.ModelProto
    feed: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    features: list[str] | None = None
    labels: list[str] | None = None
    label_output: str | None = None
    probability_output: str | None = None
    relative_outputs: frozenset[str] = frozenset()
    notes: list[str] = field(default_factory=list)


@dataclass
class TabularInputs:
    """A sample laid out for an ONNX graph and for the original model.

    Attributes:
        initial_types: skl2onnx / onnxmltools input declarations.
        feed: ONNX Runtime's inputs (FP32 columns, or STRING ``[N, 1]`` columns).
        original: what the original model is given: the sample as read (numbers as
            float64), as a DataFrame when the model was fitted on one.
        rounded: the same, float32-rounded (what the graph sees), when rounding
            changed a value; lets a note say what rounding alone does to the original.
        features: the column names of ``float_input``, when there is one and it has names.
    """

    initial_types: list[tuple[str, Any]]
    feed: dict[str, np.ndarray]
    original: pd.DataFrame | np.ndarray
    rounded: pd.DataFrame | np.ndarray | None
    features: list[str] | None


def _is_frame(sample: object) -> bool:
    return type(sample).__name__ == "DataFrame" and hasattr(sample, "columns")


def _numeric(series: pd.Series) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series))


def has_string_columns(sample: pd.DataFrame | np.ndarray) -> bool:
    """Whether a DataFrame sample has a non-numeric column (an array never has)."""
    if not _is_frame(sample):
        return False
    frame: pd.DataFrame = sample
    return not all(_numeric(frame[c]) for c in frame.columns)


def _select_columns(frame: pd.DataFrame, model: object) -> pd.DataFrame:
    """The model's own columns, in its order; extra or missing columns are errors."""
    names = getattr(model, "feature_names_in_", None)
    columns = [str(c) for c in frame.columns]
    if names is None:
        return frame
    expected = [str(n) for n in names]
    missing = [n for n in expected if n not in columns]
    if missing:
        raise ConversionError(
            f"the sample lacks column(s) the model was fitted on: {', '.join(missing)}"
        )
    extra = [c for c in columns if c not in expected]
    if extra:
        raise ConversionError(
            f"the sample has column(s) the model was not fitted on: {', '.join(extra)} "
            "(leave them out of the data, e.g. --drop-column for a target column)"
        )
    return frame[expected]


def tabular_inputs(
    sample: pd.DataFrame | np.ndarray, model: object, *, per_column: bool
) -> TabularInputs:
    """Lay ``sample`` out as one ``float_input`` ``[N, F]`` or as one input per column.

    Numbers become float32 (the ONNX input type, what a client sends as FP32); the
    original model is given the sample as read, so the check measures what serving
    changes end to end: the input's rounding and the graph's float32 arithmetic.
    (Comparing both on rounded inputs would flag tree models whose thresholds sit
    exactly on a data value, where the graph agrees with the original on the true value.)

    Raises:
        ConversionError: the sample is not 2-D, has columns the model does not know or
            lacks some it needs, or has missing values in a text column.
    """
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    fitted_on_frame = getattr(model, "feature_names_in_", None) is not None
    if not _is_frame(sample):
        x = np.asarray(sample)
        if x.ndim != 2 or x.dtype.kind not in "biuf":
            raise ConversionError(
                f"the sample must be a 2-D numeric array, got {x.ndim}-D {x.dtype}"
            )
        expected = getattr(model, "n_features_in_", None)
        if expected is not None and x.shape[1] != expected:
            raise ConversionError(
                f"the sample has {x.shape[1]} columns; the model was fitted on {expected}"
            )
        x64 = x.astype(np.float64)
        x32 = x.astype(np.float32)
        rounded = x32.astype(np.float64)
        changed = bool(np.any((rounded != x64) & ~np.isnan(x64)))
        return TabularInputs(
            [(FLOAT_INPUT, FloatTensorType([None, x.shape[1]]))],
            {FLOAT_INPUT: x32},
            x64,
            rounded if changed else None,
            None,
        )

    frame = _select_columns(sample, model)
    names = [str(c) for c in frame.columns]
    numeric = [_numeric(frame[c]) for c in frame.columns]
    original = frame.copy()
    rounded_frame = frame.copy()
    changed = False
    for column, is_numeric in zip(frame.columns, numeric, strict=True):
        if is_numeric:
            values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
            rounded = values.astype(np.float32).astype(np.float64)
            changed = changed or bool(np.any((rounded != values) & ~np.isnan(values)))
            original[column] = values
            rounded_frame[column] = rounded
    if not per_column:
        if not all(numeric):
            raise ConversionError("a single float_input needs numeric columns only")
        return TabularInputs(
            [(FLOAT_INPUT, FloatTensorType([None, len(names)]))],
            {FLOAT_INPUT: rounded_frame.to_numpy(dtype=np.float32)},
            original if fitted_on_frame else original.to_numpy(dtype=np.float64),
            _frame_or_array(rounded_frame, fitted_on_frame) if changed else None,
            names,
        )
    initial_types: list[tuple[str, Any]] = []
    feed: dict[str, np.ndarray] = {}
    for name, column, is_numeric in zip(names, frame.columns, numeric, strict=True):
        if is_numeric:
            initial_types.append((name, FloatTensorType([None, 1])))
            feed[name] = rounded_frame[column].to_numpy(dtype=np.float32).reshape(-1, 1)
            continue
        if frame[column].isna().any():
            raise ConversionError(
                f"column {name!r}: text columns must have no missing values "
                "(ONNX string tensors have no NaN); fill them before converting"
            )
        initial_types.append((name, StringTensorType([None, 1])))
        feed[name] = np.array([str(v) for v in frame[column]], dtype=object).reshape(-1, 1)
    return TabularInputs(initial_types, feed, original, rounded_frame if changed else None, None)


def _frame_or_array(frame: pd.DataFrame, keep_frame: bool) -> pd.DataFrame | np.ndarray:
    return frame if keep_frame else frame.to_numpy(dtype=np.float64, na_value=np.nan)


def rename_outputs(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename graph outputs (and every node reference to them) in place."""
    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name in names:
                node.output[i] = names[name]
        for i, name in enumerate(node.input):
            if name in names:
                node.input[i] = names[name]
    for output in graph.output:
        if output.name in names:
            output.name = names[output.name]


def class_labels(classes: np.ndarray) -> tuple[list[str] | None, str | None]:
    """``config.toml``'s ``labels`` for these classes, or a note saying why there are none.

    The server indexes ``labels`` by the label output's value, so labels are written for
    text classes (the label output then carries the text itself) and for integer classes
    ``0 … K-1``; other integer classes are left as the values the label output carries.
    """
    values = np.asarray(classes)
    if values.dtype.kind in "OUS":
        return [str(c) for c in values], None
    if values.dtype.kind in "iu" and np.array_equal(values, np.arange(len(values))):
        return [str(c) for c in values], None
    return None, (
        f"classes {values.tolist()} are not 0..K-1: no labels in config.toml; "
        "the label output carries the class values"
    )
