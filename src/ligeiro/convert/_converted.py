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
    import numpy.typing as npt
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
        feed: the sample as ONNX Runtime inputs, by input name: what a client sends.
        reference: the original model's outputs on that same input (the sample cast to
            the ONNX input's type), by ONNX output name: the converter's fidelity.
        unrounded_reference: the original's outputs on the sample as read, when casting
            it to the input type changed a value: the rounding's own effect, reported
            apart (``None`` when nothing was rounded).
        input_dtype: the numeric input type, ``"float32"`` or ``"float64"``.
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
    unrounded_reference: dict[str, np.ndarray] | None = None
    input_dtype: str = "float32"
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
        initial_types: skl2onnx / onnxmltools input declarations (FP32 or FP64 numbers,
            STRING text).
        feed: ONNX Runtime's inputs: numbers cast to the input type, text as ``[N, 1]``.
        original: what the original model is given for the check: the values of
            ``feed`` (numbers as float64), as a DataFrame when the model was fitted on one.
        unrounded: the sample as read, the same way, when casting it changed a value.
        features: the column names of ``float_input``, when there is one and it has names.
        dtype: the numeric input type.
    """

    initial_types: list[tuple[str, Any]]
    feed: dict[str, np.ndarray]
    original: pd.DataFrame | np.ndarray
    unrounded: pd.DataFrame | np.ndarray | None
    features: list[str] | None
    dtype: np.dtype[Any]

    def float32_types(self) -> list[tuple[str, Any]]:
        """``initial_types`` with float32 numbers (a graph that casts double inputs itself)."""
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

        return [
            (name, FloatTensorType(kind.shape) if isinstance(kind, DoubleTensorType) else kind)
            for name, kind in self.initial_types
        ]


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
    sample: pd.DataFrame | np.ndarray,
    model: object,
    *,
    per_column: bool,
    dtype: npt.DTypeLike = np.float32,
) -> TabularInputs:
    """Lay ``sample`` out as one ``float_input`` ``[N, F]`` or as one input per column.

    Numbers become ``dtype`` (the ONNX input type: what a client sends as FP32 or FP64).
    The original model is given those same values, so the check measures the converter
    alone; what the cast itself changes is measured apart, on the sample as read
    (``unrounded``), for the report's input-rounding section.

    Raises:
        ConversionError: the sample is not 2-D, has columns the model does not know or
            lacks some it needs, or has missing values in a text column.
    """
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    served = np.dtype(dtype)
    tensor_type = DoubleTensorType if served == np.float64 else FloatTensorType
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
        cast = x.astype(served)
        seen = cast.astype(np.float64)
        return TabularInputs(
            [(FLOAT_INPUT, tensor_type([None, x.shape[1]]))],
            {FLOAT_INPUT: cast},
            seen,
            x64 if _changed(seen, x64) else None,
            None,
            served,
        )

    frame = _select_columns(sample, model)
    names = [str(c) for c in frame.columns]
    numeric = [_numeric(frame[c]) for c in frame.columns]
    unrounded = frame.copy()
    seen_frame = frame.copy()
    changed = False
    for column, is_numeric in zip(frame.columns, numeric, strict=True):
        if is_numeric:
            values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
            seen = values.astype(served).astype(np.float64)
            changed = changed or _changed(seen, values)
            unrounded[column] = values
            seen_frame[column] = seen
    if not per_column:
        if not all(numeric):
            raise ConversionError("a single float_input needs numeric columns only")
        return TabularInputs(
            [(FLOAT_INPUT, tensor_type([None, len(names)]))],
            {FLOAT_INPUT: seen_frame.to_numpy(dtype=served)},
            _frame_or_array(seen_frame, fitted_on_frame),
            _frame_or_array(unrounded, fitted_on_frame) if changed else None,
            names,
            served,
        )
    initial_types: list[tuple[str, Any]] = []
    feed: dict[str, np.ndarray] = {}
    for name, column, is_numeric in zip(names, frame.columns, numeric, strict=True):
        if is_numeric:
            initial_types.append((name, tensor_type([None, 1])))
            feed[name] = seen_frame[column].to_numpy(dtype=served).reshape(-1, 1)
            continue
        if frame[column].isna().any():
            raise ConversionError(
                f"column {name!r}: text columns must have no missing values "
                "(ONNX string tensors have no NaN); fill them before converting"
            )
        initial_types.append((name, StringTensorType([None, 1])))
        feed[name] = np.array([str(v) for v in frame[column]], dtype=object).reshape(-1, 1)
    return TabularInputs(
        initial_types, feed, seen_frame, unrounded if changed else None, None, served
    )


def _changed(seen: np.ndarray, values: np.ndarray) -> bool:
    return bool(np.any((seen != values) & ~np.isnan(values)))


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
