"""XGBoost and LightGBM to ONNX with onnxmltools.

The sklearn wrappers (``XGBClassifier``, ``LGBMRegressor`` …, also inside a Pipeline)
go through skl2onnx, with onnxmltools' converters registered for them: one path, the
same inputs and outputs as any sklearn model (see ``_sklearn``). A bare
``lightgbm.Booster`` (a LightGBM ``.txt`` file) is converted by onnxmltools directly:
input ``float_input`` ``[-1, F]``; a classifier gives ``output_label`` and
``output_probability`` (classes ``0 … K-1``), a regressor ``variable`` ``[-1, 1]``.

Boosters add up many trees in float32 in the graph (LightGBM in float64 itself), so a
regressor's prediction differs by a few float32 ulps of its magnitude: its tolerance
is relative (see ``convert_model``).
"""

from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConversionError
from ._converted import LABEL_OUTPUT, PROBABILITY_OUTPUT, rename_outputs
from ._converted import tabular_inputs as _tabular_inputs
from ._precision import exact_thresholds
from ._sklearn import quiet_converter_warnings, classification, regression

if TYPE_CHECKING:
    import pandas as pd

    from ._converted import ConvertedModel

__all__ = ["convert_lightgbm_booster", "register_booster_converters"]

logger = logging.getLogger(__name__)

_registered = False
_BOOSTER_OPSET = 15


def register_booster_converters() -> None:
    """Teach skl2onnx the XGBoost and LightGBM sklearn wrappers (once; what is installed)."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor
    except ImportError:
        logger.debug("xgboost not installed: its converters are not registered")
    else:
        update_registered_converter(
            XGBClassifier,
            "XGBoostXGBClassifier",
            calculate_linear_classifier_output_shapes,
            convert_xgboost,
            options=classifier_options,
        )
        update_registered_converter(
            XGBRegressor,
            "XGBoostXGBRegressor",
            calculate_linear_regressor_output_shapes,
            convert_xgboost,
        )
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    except ImportError:
        logger.debug("lightgbm not installed: its converters are not registered")
    else:
        update_registered_converter(
            LGBMClassifier,
            "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes,
            convert_lightgbm,
            options=classifier_options,
        )
        update_registered_converter(
            LGBMRegressor,
            "LightGbmLGBMRegressor",
            calculate_linear_regressor_output_shapes,
            convert_lightgbm,
        )
    _registered = True


def convert_lightgbm_booster(
    booster: Any, sample: pd.DataFrame | np.ndarray, *, input_dtype: str = "float32"
) -> ConvertedModel:
    """Convert a bare ``lightgbm.Booster`` and run it on ``sample`` for the check.

    Raises:
        ConversionError: an objective other than regression, binary or multiclass, or
            a sample whose columns do not fit the booster.
    """
    import onnxmltools

    objective = str(booster.dump_model().get("objective", "")).split()[0]
    if objective not in ("binary", "multiclass", "multiclassova") and not objective.startswith(
        "regression"
    ):
        raise ConversionError(
            f"LightGBM objective {objective!r} is not supported; "
            "expected regression*, binary or multiclass"
        )
    names = list(booster.feature_name())
    # tabular_inputs checks columns against a fitted model's attributes; a Booster
    # keeps its names (Column_0 … when trained on an array) and count its own way.
    shape = SimpleNamespace(n_features_in_=booster.num_feature())
    columns = [str(c) for c in getattr(sample, "columns", ())]
    if columns and set(names) <= set(columns):
        shape.feature_names_in_ = np.array(names, dtype=object)
    inputs = _tabular_inputs(sample, shape, per_column=False, dtype=input_dtype)
    logger.info("converting a LightGBM Booster (%s) with onnxmltools", objective)
    with warnings.catch_warnings():
        quiet_converter_warnings()
        onnx_model = onnxmltools.convert_lightgbm(
            booster,
            initial_types=inputs.initial_types,
            zipmap=False,
            # onnxmltools takes the main opset only (its LightGBM converter goes to 15)
            # and picks ai.onnx.ml itself.
            target_opset=_BOOSTER_OPSET,
        )
    double = inputs.dtype == np.float64
    fix = exact_thresholds(onnx_model, booster, double=double)
    notes = [
        "LightGBM computes in float64; the graph's trees compare in "
        + (
            "float64 too, and sum leaves in float32"
            if double
            else f"float32 ({fix.changed} thresholds rounded toward the side that keeps "
            "float32 comparisons exact) and sum leaves in float32"
        )
    ]
    outputs = [o.name for o in onnx_model.graph.output]

    def predict(x: Any) -> np.ndarray:
        x = x.to_numpy(dtype=np.float64) if hasattr(x, "to_numpy") else x
        return np.asarray(booster.predict(x), dtype=np.float64)

    if objective.startswith("regression"):
        return regression(onnx_model, inputs, predict, notes)

    def answers(x: Any) -> dict[str, np.ndarray]:
        prediction = predict(x)
        if prediction.ndim == 1:  # binary: the positive class's probability
            prediction = np.column_stack([1.0 - prediction, prediction])
        return {LABEL_OUTPUT: prediction.argmax(axis=1), PROBABILITY_OUTPUT: prediction}

    rename_outputs(onnx_model, {outputs[0]: LABEL_OUTPUT, outputs[1]: PROBABILITY_OUTPUT})
    # One model per class and iteration; binary has one, for the positive class.
    classes = max(2, booster.num_model_per_iteration())
    return classification(onnx_model, inputs, answers, [str(i) for i in range(classes)], notes)
