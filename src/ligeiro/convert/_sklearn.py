"""scikit-learn estimators and pipelines to ONNX with skl2onnx (XGBoost and LightGBM inside).

Inputs follow skl2onnx's conventions:

- numeric data: one input ``float_input`` ``[-1, F]`` FP32; its column names (a
  DataFrame's) become ``features`` in ``config.toml``, so ``:predict`` takes objects;
- data with text columns, or a ``ColumnTransformer`` that picks columns by name: one
  ``[-1, 1]`` input per column, named after it, FP32 or STRING. A ``ColumnTransformer``
  routes whole named columns, so the graph needs them apart; ``config.toml`` then has
  no ``features`` (they describe a single ``[-1, N]`` input) and a V2 request sends one
  tensor per column.

Outputs: a classifier gives ``output_label`` ``[-1]`` and ``output_probability``
``[-1, classes]`` (ZipMap off); one without ``predict_proba`` (``LinearSVC``,
``RidgeClassifier``) gives ``output_label`` and ``output_score`` (its
``decision_function``). A regressor gives skl2onnx's ``variable`` ``[-1, 1]``.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConversionError
from ._converted import (
    LABEL_OUTPUT,
    PROBABILITY_OUTPUT,
    ConvertedModel,
    class_labels,
    has_string_columns,
    rename_outputs,
    tabular_inputs,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    import onnx
    import pandas as pd

    from ._converted import TabularInputs

__all__ = [
    "SCORE_OUTPUT",
    "VARIABLE_OUTPUT",
    "convert_sklearn_model",
    "regression",
    "unwrap_search",
]

logger = logging.getLogger(__name__)

SCORE_OUTPUT = "output_score"
VARIABLE_OUTPUT = "variable"
# ai.onnx.ml 3 has TreeEnsemble* with the attributes skl2onnx writes; 17 is what
# examples/build_iris.py uses and every supported ONNX Runtime runs.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def unwrap_search(model: Any) -> tuple[Any, list[str]]:
    """``GridSearchCV`` / ``RandomizedSearchCV`` → their ``best_estimator_``, with a note."""
    notes = []
    while hasattr(model, "best_estimator_") and hasattr(model, "cv_results_"):
        name = type(model).__name__
        model = model.best_estimator_
        notes.append(f"{name} unwrapped: converted its best_estimator_ ({type(model).__name__})")
    return model, notes


def _estimators(model: Any) -> Iterator[Any]:
    """The model and everything nested in it (pipeline steps, column transformers)."""
    yield model
    children: list[Any] = []
    if hasattr(model, "steps"):
        children = [step for _, step in model.steps]
    elif hasattr(model, "transformers_"):
        children = [t for _, t, _ in model.transformers_]
    elif hasattr(model, "transformer_list"):
        children = [t for _, t in model.transformer_list]
    for child in children:
        if not isinstance(child, str):  # "drop" and "passthrough"
            yield from _estimators(child)


def _final(model: Any) -> Any:
    while hasattr(model, "steps"):
        model = model.steps[-1][1]
    return model


def _selects_by_name(model: Any) -> bool:
    for estimator in _estimators(model):
        for _, _, columns in getattr(estimator, "transformers_", ()):
            picked = [columns] if isinstance(columns, str) else list(np.ravel(columns))
            if any(isinstance(c, str) for c in picked):
                return True
    return False


def convert_sklearn_model(model: Any, sample: pd.DataFrame | np.ndarray) -> ConvertedModel:
    """Convert a fitted estimator (or pipeline) and run it on ``sample`` for the check.

    Raises:
        ConversionError: the model is not fitted, is neither a classifier nor a
            regressor, or skl2onnx has no converter for a part of it.
    """
    from skl2onnx import convert_sklearn
    from sklearn.base import is_classifier, is_regressor

    model, notes = unwrap_search(model)
    if not (is_classifier(model) or is_regressor(model)):
        raise ConversionError(
            f"{type(model).__name__} is neither a classifier nor a regressor; "
            "convert supports predictors (a Pipeline must end in one)"
        )
    if any(type(e).__module__.split(".")[0] in ("xgboost", "lightgbm") for e in _estimators(model)):
        from ._boosting import register_booster_converters

        register_booster_converters()
    per_column = has_string_columns(sample) or _selects_by_name(model)
    inputs = tabular_inputs(sample, model, per_column=per_column)
    classifier = is_classifier(model)
    final = _final(model)
    has_proba = hasattr(final, "predict_proba")
    # skl2onnx's Pipeline parser adds zipmap=True to a classifier step the options do not
    # name, even one that has no ZipMap (LinearSVC): name it always.
    options: dict[int, dict[str, Any]] | None = None
    if classifier:
        options = {id(final): {"zipmap": False}}
    logger.info("converting %s with skl2onnx", type(model).__name__)
    try:
        with warnings.catch_warnings():
            _quiet_converter_warnings()
            try:
                onnx_model = convert_sklearn(
                    model,
                    initial_types=inputs.initial_types,
                    options=options,
                    target_opset=TARGET_OPSET,
                )
            except NameError as exc:  # a classifier with no ZipMap at all (LinearSVC)
                if "zipmap" not in str(exc):
                    raise
                onnx_model = convert_sklearn(
                    model,
                    initial_types=inputs.initial_types,
                    options={id(final): {"nocl": False}},
                    target_opset=TARGET_OPSET,
                )
    except (RuntimeError, NameError, ValueError, TypeError, KeyError, AttributeError) as exc:
        # skl2onnx says "Unable to find a shape calculator for type ..." for what it
        # cannot convert; the class name is what the user needs.
        raise ConversionError(f"skl2onnx cannot convert {type(model).__name__}: {exc}") from exc
    outputs = [o.name for o in onnx_model.graph.output]
    x = inputs.original
    if classifier:
        second = PROBABILITY_OUTPUT if has_proba else SCORE_OUTPUT
        rename_outputs(onnx_model, {outputs[0]: LABEL_OUTPUT, outputs[1]: second})
        reference = {LABEL_OUTPUT: np.asarray(model.predict(x))}
        if has_proba:
            reference[second] = np.asarray(model.predict_proba(x))
        else:
            reference[second] = np.asarray(model.decision_function(x)).reshape(len(x), -1)
        labels, note = class_labels(np.asarray(model.classes_))
        if note:
            notes.append(note)
        return ConvertedModel(
            onnx_model,
            inputs.feed,
            reference,
            features=inputs.features,
            labels=labels,
            label_output=LABEL_OUTPUT,
            probability_output=second if has_proba else None,
            relative_outputs=frozenset() if has_proba else frozenset({second}),
            notes=notes + _rounding_notes(model, x, inputs.rounded, classifier),
        )
    if len(outputs) != 1:
        raise ConversionError(
            f"{type(model).__name__}: expected one regression output, got {', '.join(outputs)}"
        )
    prediction = np.asarray(model.predict(x), dtype=np.float64)
    return regression(
        onnx_model,
        inputs,
        prediction,
        notes + _rounding_notes(model, x, inputs.rounded, classifier),
    )


def regression(
    onnx_model: onnx.ModelProto, inputs: TabularInputs, prediction: np.ndarray, notes: list[str]
) -> ConvertedModel:
    """A regressor's conversion: its one output named ``variable``, compared relatively."""
    rename_outputs(onnx_model, {onnx_model.graph.output[0].name: VARIABLE_OUTPUT})
    return ConvertedModel(
        onnx_model,
        inputs.feed,
        {VARIABLE_OUTPUT: prediction.reshape(len(prediction), -1)},
        features=inputs.features,
        relative_outputs=frozenset({VARIABLE_OUTPUT}),
        notes=notes,
    )


def _quiet_converter_warnings() -> None:
    """Silence what skl2onnx 1.20 itself triggers, which its users can do nothing about."""
    # Tree converters hand numpy bools/uint32s to onnx.helper, which protobuf 6 flags
    # (the values are right; protobuf only deprecates the implicit conversion).
    warnings.filterwarnings(
        "ignore",
        message=r"Field onnx\.AttributeProto\.ints: Expected an int, got a boolean",
        category=DeprecationWarning,
    )
    # The SVC converter reads probA_/probB_, which scikit-learn 1.9 deprecates along
    # with probability=True; reading them changes nothing.
    warnings.filterwarnings(
        "ignore", message=r"Attribute `prob[AB]_` was deprecated", category=FutureWarning
    )


def _rounding_notes(
    model: Any,
    unrounded: pd.DataFrame | np.ndarray,
    rounded: pd.DataFrame | np.ndarray | None,
    classifier: bool,
) -> list[str]:
    """Say that the graph runs in float32, and what rounding the sample alone changes."""
    if type(_final(model)).__module__.startswith("xgboost"):
        first = (
            "XGBoost computes in float32 like the graph; the steps before it and the "
            "sum of the trees' leaves may differ by float32 rounding"
        )
    else:
        first = (
            "float64 model served as float32: scikit-learn computes in float64, the "
            "ONNX graph in float32 (inputs, weights, thresholds); the differences below "
            "are that effect"
        )
    notes = [first]
    if rounded is None:
        return notes
    if classifier:
        changed = int(np.sum(np.asarray(model.predict(unrounded)) != model.predict(rounded)))
        what = f"{changed} label(s)"
        if hasattr(model, "predict_proba"):
            before = np.asarray(model.predict_proba(unrounded))
            after = np.asarray(model.predict_proba(rounded))
            what = f"probabilities by up to {np.max(np.abs(before - after)):.3g}, " + what
    else:
        before = np.asarray(model.predict(unrounded), dtype=np.float64)
        after = np.asarray(model.predict(rounded), dtype=np.float64)
        what = f"predictions by up to {np.max(np.abs(before - after)):.3g}"
    notes.append(
        "the ONNX model is given the sample rounded to float32 (its input type, what a "
        f"client sends as FP32); on the original model that rounding alone changes {what}"
    )
    return notes
