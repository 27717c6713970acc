"""Tree ensembles that answer like their original on what a client sends.

Tree models differ in what they compare. scikit-learn's decision trees, forests and
``GradientBoosting*`` and XGBoost round the input to float32 first (their thresholds
are chosen for float32 values, and skl2onnx already writes them so that a float32
comparison is exact); ``HistGradientBoosting*`` and LightGBM compare the float64 input
with float64 thresholds. The converters round those thresholds to the *nearest*
float32, which breaks two things this module mends, ``TreeEnsemble*`` node by node:

- **float32 graphs.** A client's float32 value ``v`` that rounds onto the same float32
  as the threshold ``t`` goes the wrong way: ``v <= nearest(t)`` holds where the
  original's ``v <= t`` does not. For a float32 ``v``, ``v <= t`` is exactly
  ``v <= floor32(t)`` (the largest float32 not above ``t``), so thresholds are rewritten
  that way from the model's own float64 ones. Measured on scikit-learn's diabetes data:
  a ``HistGradientBoostingRegressor(max_iter=20)`` sent float32-rounded rows answered 14
  of 442 with another leaf before, none after.
- **float64 graphs** (``input_dtype="float64"``). Models that compare in float64 get
  their float64 thresholds back (``nodes_values_as_tensor``, double) and a double input;
  ONNX Runtime's ``ai.onnx.ml`` 3 tree operators still answer float32 scores, so a
  ``Cast`` to double follows each node, as skl2onnx's declared outputs expect. Models
  that round to float32 themselves keep their float32 graph behind one ``Cast`` of the
  double input to float32: the rounding the original does, done where it does it.

The map from a graph's rounded thresholds back to the model's is keyed by feature and
rounded value, so it needs no knowledge of a converter's node order; a rounded value
that two different thresholds of one feature share is left as it is and counted.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

    import onnx

__all__ = [
    "ThresholdFix",
    "exact_thresholds",
    "float_input_from_double",
    "float64_thresholds",
    "rounds_inputs_to_float32",
    "tree_estimators",
]

logger = logging.getLogger(__name__)

TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
# The output ONNX Runtime computes in float32 whatever the input type: the scores.
_SCORES = {"TreeEnsembleClassifier": 1, "TreeEnsembleRegressor": 0}
_BELOW = frozenset({"BRANCH_LEQ", "BRANCH_GT"})  # v <= t  <=>  v <= floor32(t)
_ABOVE = frozenset({"BRANCH_LT", "BRANCH_GTE"})  # v < t   <=>  v < ceil32(t)
_ML_OPSET = 3  # nodes_values_as_tensor


@dataclass(frozen=True, slots=True)
class ThresholdFix:
    """What ``exact_thresholds`` did: thresholds moved, and those it could not place."""

    changed: int
    ambiguous: int


def rounds_inputs_to_float32(estimator: object) -> bool:
    """Whether a tree model casts its input to float32 before comparing (sklearn, XGBoost)."""
    module = type(estimator).__module__
    if module.startswith("xgboost"):
        return True
    if module.startswith("sklearn.ensemble._hist_gradient_boosting"):
        return False
    return module.startswith(("sklearn.tree", "sklearn.ensemble._forest", "sklearn.ensemble._gb"))


def tree_estimators(estimators: Iterator[Any]) -> list[Any]:
    """The tree ensembles among ``estimators`` whose float64 thresholds can be read."""
    return [e for e in estimators if _splits(e) is not None]


def _splits(estimator: Any) -> list[tuple[int, float]] | None:
    """Every split of the model as (feature, float64 threshold), or None if not a known tree."""
    module = type(estimator).__module__
    if module.startswith("sklearn.ensemble._hist_gradient_boosting"):
        predictors = getattr(estimator, "_predictors", None)
        if predictors is None:
            return None
        splits = []
        for per_class in predictors:
            for predictor in per_class:
                nodes = predictor.nodes[~predictor.nodes["is_leaf"].astype(bool)]
                splits += zip(
                    nodes["feature_idx"].tolist(), nodes["num_threshold"].tolist(), strict=True
                )
        return splits
    booster = estimator
    if module.startswith("lightgbm") and hasattr(estimator, "booster_"):
        booster = estimator.booster_
    if type(booster).__module__.startswith("lightgbm") and hasattr(booster, "dump_model"):
        splits = []
        stack = [t["tree_structure"] for t in booster.dump_model()["tree_info"]]
        while stack:
            node = stack.pop()
            if "split_feature" in node and isinstance(node.get("threshold"), float):
                splits.append((int(node["split_feature"]), float(node["threshold"])))
            stack += [node[k] for k in ("left_child", "right_child") if k in node]
        return splits
    return None


def _attribute(node: onnx.NodeProto, name: str) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return attribute
    return None


def _trees(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in TREE_OPS]


def _float32_toward(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """Each float64 threshold as the float32 that decides every float32 input alike."""
    nearest = values.astype(np.float32)
    up = nearest.astype(np.float64) > values
    down = nearest.astype(np.float64) < values
    below = np.array([m in _BELOW for m in modes], dtype=bool)
    above = np.array([m in _ABOVE for m in modes], dtype=bool)
    result = nearest.copy()
    result[below & up] = np.nextafter(nearest[below & up], np.float32(-np.inf))
    result[above & down] = np.nextafter(nearest[above & down], np.float32(np.inf))
    return result


def exact_thresholds(model: onnx.ModelProto, estimator: Any, *, double: bool) -> ThresholdFix:
    """Write ``estimator``'s float64 thresholds into ``model``'s tree nodes, in place.

    Args:
        model: the converted graph.
        estimator: the tree ensemble it holds (HistGradientBoosting, LightGBM).
        double: ``True`` for a graph with double inputs: float64 thresholds as tensors
            and a ``Cast`` to double after the scores; ``False``: float32 thresholds
            rounded so that float32 comparisons are exact.

    Returns:
        How many thresholds changed, and how many could not be matched.
    """
    from onnx import TensorProto, helper, numpy_helper

    splits = _splits(estimator) or []
    known: dict[tuple[int, float], set[float]] = defaultdict(set)
    for feature, threshold in splits:
        known[(feature, float(np.float32(threshold)))].add(threshold)
    changed = ambiguous = 0
    for node in _trees(model):
        values = _attribute(node, "nodes_values")
        features = _attribute(node, "nodes_featureids")
        modes = _attribute(node, "nodes_modes")
        if values is None or features is None or modes is None:
            continue
        rounded = np.array(values.floats, dtype=np.float32)
        exact = rounded.astype(np.float64)
        names = [m.decode() for m in modes.strings]
        for i, (feature, value, mode) in enumerate(zip(features.ints, rounded, names, strict=True)):
            if mode == "LEAF":
                continue
            candidates = known.get((int(feature), float(value)), set())
            if len(candidates) == 1:
                exact[i] = next(iter(candidates))
            elif len(candidates) > 1:
                ambiguous += 1
        if double:
            changed += int(np.sum(exact != rounded.astype(np.float64)))
            node.attribute.remove(values)
            node.attribute.append(
                helper.make_attribute(
                    "nodes_values_as_tensor", numpy_helper.from_array(exact.astype(np.float64))
                )
            )
        else:
            fixed = _float32_toward(exact, names)
            changed += int(np.sum(fixed != rounded))
            del values.floats[:]
            values.floats.extend(fixed.tolist())
    if double:
        _cast_scores_to_double(model, TensorProto.DOUBLE, helper)
        for opset in model.opset_import:
            if opset.domain == "ai.onnx.ml" and opset.version < _ML_OPSET:
                opset.version = _ML_OPSET
    if ambiguous:
        logger.info("%d tree thresholds share a float32 value; left as converted", ambiguous)
    return ThresholdFix(changed, ambiguous)


def _cast_scores_to_double(model: onnx.ModelProto, double: int, helper: Any) -> None:
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type in TREE_OPS:
            index = _SCORES[node.op_type]
            scores = node.output[index]
            node.output[index] = f"{scores}_float32"
            nodes.append(helper.make_node("Cast", [node.output[index]], [scores], to=double))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def float64_thresholds(model: onnx.ModelProto) -> bool:
    """Whether the graph's trees compare against float64 thresholds."""
    return any(_attribute(n, "nodes_values_as_tensor") is not None for n in _trees(model))


def float_input_from_double(model: onnx.ModelProto) -> None:
    """Give a float32 graph double inputs, each cast to float32 first, in place."""
    from onnx import TensorProto, helper

    casts = []
    for graph_input in model.graph.input:
        tensor = graph_input.type.tensor_type
        if tensor.elem_type != TensorProto.FLOAT:
            continue
        name = graph_input.name
        inner = f"{name}_float32"
        for node in model.graph.node:
            for i, used in enumerate(node.input):
                if used == name:
                    node.input[i] = inner
        tensor.elem_type = TensorProto.DOUBLE
        casts.append(helper.make_node("Cast", [name], [inner], to=TensorProto.FLOAT))
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
