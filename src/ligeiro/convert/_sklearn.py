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
from ._precision import (
    exact_thresholds,
    float_input_from_double,
    rounds_inputs_to_float32,
    tree_estimators,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import onnx
    import pandas as pd

    from ._converted import TabularInputs
    from ._precision import ThresholdFix

__all__ = [
    "SCORE_OUTPUT",
    "VARIABLE_OUTPUT",
    "classification",
    "convert_sklearn_model",
    "quiet_converter_warnings",
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


def convert_sklearn_model(
    model: Any, sample: pd.DataFrame | np.ndarray, *, input_dtype: str = "float32"
) -> ConvertedModel:
    """Convert a fitted estimator (or pipeline) and run it on ``sample`` for the check.

    Args:
        model: the estimator.
        sample: the rows to check on.
        input_dtype: ``"float32"`` or ``"float64"``: the numeric input type served
            (``_precision`` says what float64 changes for tree ensembles).

    Raises:
        ConversionError: the model is not fitted, is neither a classifier nor a
            regressor, or skl2onnx has no converter for a part of it.
    """
    from sklearn.base import is_classifier, is_regressor

    model, notes = unwrap_search(model)
    if not (is_classifier(model) or is_regressor(model)):
        raise ConversionError(
            f"{type(model).__name__} is neither a classifier nor a regressor; "
            "convert supports predictors (a Pipeline must end in one)"
        )
    parts = list(_estimators(model))
    if any(type(e).__module__.split(".")[0] in ("xgboost", "lightgbm") for e in parts):
        from ._boosting import register_booster_converters

        register_booster_converters()
    per_column = has_string_columns(sample) or _selects_by_name(model)
    inputs = tabular_inputs(sample, model, per_column=per_column, dtype=input_dtype)
    classifier = is_classifier(model)
    final = _final(model)
    has_proba = hasattr(final, "predict_proba")
    trees = tree_estimators(iter(parts))
    # Models that round their input to float32 themselves keep their float32 graph
    # behind a Cast of the double input (see _precision).
    casts_itself = (
        inputs.dtype == np.float64 and not trees and any(rounds_inputs_to_float32(e) for e in parts)
    )
    declared = inputs.float32_types() if casts_itself else inputs.initial_types
    onnx_model = _skl2onnx(model, declared, final if classifier else None)
    if casts_itself:
        float_input_from_double(onnx_model)
        notes.append(
            f"{type(final).__name__} rounds its input to float32 before its trees compare: "
            "the graph takes float64 and casts it to float32 first, as the model does"
        )
    for tree in trees:
        fix = exact_thresholds(onnx_model, tree, double=inputs.dtype == np.float64)
        if fix.changed:
            notes.append(_threshold_note(type(tree).__name__, fix, inputs.dtype))
    outputs = [o.name for o in onnx_model.graph.output]
    if classifier:
        second = PROBABILITY_OUTPUT if has_proba else SCORE_OUTPUT
        rename_outputs(onnx_model, {outputs[0]: LABEL_OUTPUT, outputs[1]: second})
        labels, note = class_labels(np.asarray(model.classes_))
        if note:
            notes.append(note)
        return ConvertedModel(
            onnx_model,
            inputs.feed,
            _classifier_answers(model, inputs.original, second),
            unrounded_reference=(
                None
                if inputs.unrounded is None
                else _classifier_answers(model, inputs.unrounded, second)
            ),
            input_dtype=inputs.dtype.name,
            features=inputs.features,
            labels=labels,
            label_output=LABEL_OUTPUT,
            probability_output=second if has_proba else None,
            relative_outputs=frozenset() if has_proba else frozenset({second}),
            notes=notes + _precision_notes(model, inputs.dtype),
        )
    if len(outputs) != 1:
        raise ConversionError(
            f"{type(model).__name__}: expected one regression output, got {', '.join(outputs)}"
        )
    return regression(
        onnx_model,
        inputs,
        lambda x: np.asarray(model.predict(x), dtype=np.float64),
        notes + _precision_notes(model, inputs.dtype),
    )


def _skl2onnx(model: Any, initial_types: list[tuple[str, Any]], classifier: Any) -> onnx.ModelProto:
    """skl2onnx's conversion, its errors as ``ConversionError``."""
    from skl2onnx import convert_sklearn

    # skl2onnx's Pipeline parser adds zipmap=True to a classifier step the options do not
    # name, even one that has no ZipMap (LinearSVC): name it always.
    options = None if classifier is None else {id(classifier): {"zipmap": False}}
    logger.info("converting %s with skl2onnx", type(model).__name__)
    try:
        with warnings.catch_warnings():
            quiet_converter_warnings()
            try:
                return convert_sklearn(
                    model, initial_types=initial_types, options=options, target_opset=TARGET_OPSET
                )
            except NameError as exc:  # a classifier with no ZipMap at all (LinearSVC)
                if "zipmap" not in str(exc):
                    raise
                return convert_sklearn(
                    model,
                    initial_types=initial_types,
                    options={id(classifier): {"nocl": False}},
                    target_opset=TARGET_OPSET,
                )
    except (RuntimeError, NameError, ValueError, TypeError, KeyError, AttributeError) as exc:
        # skl2onnx says "Unable to find a shape calculator for type ..." for what it
        # cannot convert; the class name is what the user needs.
        raise ConversionError(f"skl2onnx cannot convert {type(model).__name__}: {exc}") from exc


def _classifier_answers(
    model: Any, x: pd.DataFrame | np.ndarray, second: str
) -> dict[str, np.ndarray]:
    answers = {LABEL_OUTPUT: np.asarray(model.predict(x))}
    if second == PROBABILITY_OUTPUT:
        answers[second] = np.asarray(model.predict_proba(x))
    else:
        answers[second] = np.asarray(model.decision_function(x)).reshape(len(x), -1)
    return answers


def regression(
    onnx_model: onnx.ModelProto,
    inputs: TabularInputs,
    predict: Callable[[Any], np.ndarray],
    notes: list[str],
) -> ConvertedModel:
    """A regressor's conversion: its one output named ``variable``, compared relatively.

    ``predict`` runs the original on a sample laid out like ``inputs.original``.
    """
    rename_outputs(onnx_model, {onnx_model.graph.output[0].name: VARIABLE_OUTPUT})

    def answers(x: Any) -> dict[str, np.ndarray]:
        prediction = np.asarray(predict(x), dtype=np.float64)
        return {VARIABLE_OUTPUT: prediction.reshape(len(prediction), -1)}

    return _checked(
        onnx_model, inputs, answers, notes, relative_outputs=frozenset({VARIABLE_OUTPUT})
    )


def classification(
    onnx_model: onnx.ModelProto,
    inputs: TabularInputs,
    answers: Callable[[Any], dict[str, np.ndarray]],
    labels: list[str] | None,
    notes: list[str],
) -> ConvertedModel:
    """A classifier's conversion whose graph answers ``output_label``, ``output_probability``.

    ``answers`` runs the original on a sample laid out like ``inputs.original`` and
    gives both outputs.
    """
    return _checked(
        onnx_model,
        inputs,
        answers,
        notes,
        labels=labels,
        label_output=LABEL_OUTPUT,
        probability_output=PROBABILITY_OUTPUT,
    )


def _checked(
    onnx_model: onnx.ModelProto,
    inputs: TabularInputs,
    answers: Callable[[Any], dict[str, np.ndarray]],
    notes: list[str],
    **config: Any,
) -> ConvertedModel:
    """The graph with the original's answers on what a client sends (and on the sample as
    read, when the cast changed it); ``config`` holds the outputs' roles and labels."""
    return ConvertedModel(
        onnx_model,
        inputs.feed,
        answers(inputs.original),
        unrounded_reference=None if inputs.unrounded is None else answers(inputs.unrounded),
        input_dtype=inputs.dtype.name,
        features=inputs.features,
        notes=notes,
        **config,
    )


def _threshold_note(name: str, fix: ThresholdFix, dtype: np.dtype[Any]) -> str:
    if dtype == np.float64:
        what = f"{fix.changed} tree thresholds kept in float64 (the converter rounds them)"
    else:
        what = (
            f"{fix.changed} tree thresholds rounded toward the side that keeps float32 "
            "comparisons exact (the converter rounds to nearest)"
        )
    if fix.ambiguous:
        what += f"; {fix.ambiguous} shared a float32 value and were left as converted"
    return f"{name}: {what}"


def quiet_converter_warnings() -> None:
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


def _precision_notes(model: Any, dtype: np.dtype[Any]) -> list[str]:
    """Say in which precision the graph computes, beside the original's."""
    if dtype == np.float64:
        return [
            "float64 inputs: clients send FP64; trees compare in float64 as the original "
            "does, other steps may still run in float32 where the converter has no double"
        ]
    if type(_final(model)).__module__.startswith("xgboost"):
        return [
            "XGBoost computes in float32 like the graph; the steps before it and the "
            "sum of the trees' leaves may differ by float32 rounding"
        ]
    return [
        "float64 model served as float32: scikit-learn computes in float64, the ONNX "
        "graph in float32 (weights, leaf sums); the differences above are that effect"
    ]
