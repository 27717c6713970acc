"""CatBoost to ONNX with CatBoost's own exporter (``save_model(format="onnx")``).

CatBoost writes one ``TreeEnsembleClassifier`` (then a ``ZipMap``) or
``TreeEnsembleRegressor`` over a float32 input ``features``. The graph is made to look
like every other converted model: input ``float_input`` ``[-1, F]``; a classifier gives
``output_label`` ``[-1]`` and ``output_probability`` ``[-1, classes]`` (the ZipMap, which
turns them into a list of maps, is dropped), a regressor ``variable`` ``[-1, 1]``.

CatBoost keeps its features as float32 itself, so a float32 graph compares what the
original compares; with ``input_dtype="float64"`` the graph takes double and casts it
to float32 first, as CatBoost does (see ``_precision``). Categorical and text features
have no ONNX export in CatBoost: such a model is refused.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConversionError
from ._converted import (
    FLOAT_INPUT,
    LABEL_OUTPUT,
    PROBABILITY_OUTPUT,
    class_labels,
    rename_outputs,
    tabular_inputs,
)
from ._precision import float_input_from_double
from ._sklearn import VARIABLE_OUTPUT, classification, regression

if TYPE_CHECKING:
    import onnx
    import pandas as pd

    from ._converted import ConvertedModel

__all__ = ["CLASSIFIER_LOSSES", "convert_catboost_model", "is_catboost_model"]

logger = logging.getLogger(__name__)

# Loss functions whose models answer classes (the rest answer numbers).
CLASSIFIER_LOSSES = ("Logloss", "CrossEntropy", "MultiClass", "MultiClassOneVsAll")
# CatBoost's graph has ai.onnx.ml only; the Cast for float64 inputs needs the main domain.
_OPSET = 17
_IR_VERSION = 8  # the IR version that goes with opset 17


def is_catboost_model(model: object) -> bool:
    """Whether ``model`` is a CatBoost model (without importing catboost for others)."""
    return any(c.__module__.split(".")[0] == "catboost" for c in type(model).__mro__)


def convert_catboost_model(
    model: Any, sample: pd.DataFrame | np.ndarray, *, input_dtype: str = "float32"
) -> ConvertedModel:
    """Export a fitted ``CatBoostClassifier`` / ``CatBoostRegressor``; run it on ``sample``.

    Raises:
        ConversionError: the model is not fitted, has categorical or text features, is
            neither a classifier nor a regressor, or the sample does not fit it.
    """
    import onnx

    if not model.is_fitted():
        raise ConversionError(f"{type(model).__name__} is not fitted")
    loss = str(model.get_all_params().get("loss_function", "")).split(":")[0]
    classifier = loss in CLASSIFIER_LOSSES
    names = [str(n) for n in model.feature_names_]
    special = [names[i] for i in (*model.get_cat_feature_indices(), *_text_features(model))]
    if special:
        raise ConversionError(
            f"{type(model).__name__} has categorical or text features ({', '.join(special)}): "
            "CatBoost's ONNX export supports numeric features only; retrain with them "
            "encoded as numbers"
        )
    shape = SimpleNamespace(n_features_in_=len(names))
    columns = [str(c) for c in getattr(sample, "columns", ())]
    if columns and set(names) <= set(columns):
        shape.feature_names_in_ = np.array(names, dtype=object)
    inputs = tabular_inputs(sample, shape, per_column=False, dtype=input_dtype)
    onnx_model = onnx.load_from_string(_export(model))
    _as_converted_graph(onnx_model, classifier)
    notes = ["exported with CatBoost's own ONNX exporter (save_model(format='onnx'))"]
    if inputs.dtype == np.float64:
        float_input_from_double(onnx_model)
        notes.append(
            "CatBoost rounds its input to float32 before its trees compare: the graph takes "
            "float64 and casts it to float32 first, as the model does"
        )

    def frame(x: Any) -> Any:
        # CatBoost takes a DataFrame with its own column names, or an array in its order.
        return x if hasattr(x, "columns") else np.asarray(x, dtype=np.float64)

    if not classifier:
        if loss.startswith("MultiRMSE"):
            raise ConversionError("CatBoost MultiRMSE (several targets) is not supported")
        return regression(
            onnx_model,
            inputs,
            lambda x: np.asarray(model.predict(frame(x)), dtype=np.float64),
            notes,
        )

    def answers(x: Any) -> dict[str, np.ndarray]:
        return {
            LABEL_OUTPUT: np.asarray(model.predict(frame(x))).reshape(-1),
            PROBABILITY_OUTPUT: np.asarray(model.predict_proba(frame(x)), dtype=np.float64),
        }

    labels, note = class_labels(np.asarray(model.classes_))
    if note:
        notes.append(note)
    return classification(onnx_model, inputs, answers, labels, notes)


def _text_features(model: Any) -> list[int]:
    getter = getattr(model, "get_text_feature_indices", None)
    return list(getter()) if getter is not None else []


def _export(model: Any) -> bytes:
    from catboost import CatBoostError

    with tempfile.TemporaryDirectory(prefix="ligeiro-catboost-") as work:
        path = Path(work) / "model.onnx"
        logger.info("exporting %s with CatBoost's ONNX exporter", type(model).__name__)
        try:
            model.save_model(str(path), format="onnx")
        except CatBoostError as exc:
            # Categorical and text features: CatBoost says it cannot export them.
            raise ConversionError(
                f"CatBoost cannot export {type(model).__name__} to ONNX: {exc}"
            ) from None
        return path.read_bytes()


def _as_converted_graph(model: onnx.ModelProto, classifier: bool) -> None:
    """Rename to the converted models' names, drop the ZipMap, declare batch shapes."""
    from onnx import TensorProto, helper

    graph = model.graph
    if len(graph.input) != 1:
        raise ConversionError(
            f"CatBoost's ONNX export has {len(graph.input)} inputs; expected one"
        )
    old_input = graph.input[0].name
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old_input:
                node.input[i] = FLOAT_INPUT
    graph.input[0].name = FLOAT_INPUT
    if classifier:
        zipmaps = [n for n in graph.node if n.op_type == "ZipMap"]
        (tree,) = [n for n in graph.node if n.op_type == "TreeEnsembleClassifier"]
        label, probabilities = tree.output
        for zipmap in zipmaps:
            graph.node.remove(zipmap)
        classes = _class_count(tree)
        del graph.output[:]
        graph.output.extend(
            [
                helper.make_tensor_value_info(label, _label_type(tree), [None]),
                helper.make_tensor_value_info(probabilities, TensorProto.FLOAT, [None, classes]),
            ]
        )
        rename_outputs(model, {label: LABEL_OUTPUT, probabilities: PROBABILITY_OUTPUT})
    else:
        (output,) = graph.output
        name = output.name
        del graph.output[:]
        # CatBoost declares [N]; ONNX Runtime answers [N, 1].
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 1]))
        rename_outputs(model, {name: VARIABLE_OUTPUT})
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", _OPSET))
    model.ir_version = max(model.ir_version, _IR_VERSION)


def _label_type(tree: onnx.NodeProto) -> int:
    from onnx import TensorProto

    names = {a.name for a in tree.attribute}
    return TensorProto.STRING if "classlabels_strings" in names else TensorProto.INT64


def _class_count(tree: onnx.NodeProto) -> int:
    from onnx import helper

    for attribute in tree.attribute:
        if attribute.name in ("classlabels_int64s", "classlabels_strings"):
            return len(helper.get_attribute_value(attribute))
    raise ConversionError("CatBoost's ONNX export has no class labels")
