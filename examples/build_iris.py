"""Build the seed's iris model (seed 003) into a ligeiro model repository.

The pipeline is the article's, step for step: ``SimpleImputer(mean,
keep_empty_features=True)`` → ``StandardScaler`` → ``LogisticRegression``, tuned by the
same ``GridSearchCV`` on scikit-learn's bundled iris. ``best_estimator_`` is converted
with skl2onnx (no ZipMap, so ``output_probability`` is a plain ``[N, 3]`` tensor), and
the model is written only if ONNX Runtime agrees with scikit-learn on the whole test
split: identical labels and probabilities within ``--tolerance``.

Run: ``python examples/build_iris.py --out examples/models``

Writes ``<out>/iris/1/model.onnx``, ``<out>/iris/config.toml``, ``<out>/iris/warmup.json``
(the warm-up request: the seed's first row, then each feature's minimum and maximum over
the data set, so the dashboard can show the ranges) and ``<out>/iris/parity.json`` (the
check's numbers). ``--pickle PATH`` also saves the
fitted sklearn pipeline with joblib, for the FastAPI+pickle baseline in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.datasets import load_iris
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

logger = logging.getLogger("build_iris")

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABELS = ["iris-setosa", "iris-versicolor", "iris-virginica"]  # the seed's Go MAPPED_LABELS
SEED = 42

CONFIG = f"""\
# The seed's iris pipeline (examples/build_iris.py). Inputs and outputs come from the
# ONNX graph; this file names the features and classes for the friendly endpoint
# POST /v1/models/iris:predict.
features = {json.dumps(FEATURES)}
labels = {json.dumps(LABELS)}
label_output = "output_label"
probability_output = "output_probability"
# A V2 request run before the model takes traffic: the seed's first row (a setosa), then
# each feature's minimum and maximum over the data set (/docs and the dashboard show them).
warmup = "warmup.json"
"""
FIRST_ROW = [5.1, 3.5, 1.4, 0.2]


def train() -> tuple[Pipeline, np.ndarray, np.ndarray]:
    """Fit the seed's GridSearchCV; return its best pipeline and the held-out split."""
    iris = load_iris()
    x = iris.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, iris.target, test_size=0.2, random_state=SEED, stratify=iris.target
    )
    pipeline = Pipeline(
        steps=[
            ("Imputer", SimpleImputer(strategy="mean", keep_empty_features=True)),
            ("normalization", StandardScaler()),
            ("estimator", LogisticRegression()),
        ]
    )
    # The seed's grid, kept as written: sklearn 1.8 deprecated `penalty` (None means
    # C=inf, "l2" means l1_ratio=0), which changes nothing in the fitted model.
    warnings.filterwarnings("ignore", message="'penalty' was deprecated", category=FutureWarning)
    parameters = {
        "estimator__solver": ["newton-cg"],
        "estimator__tol": [0.0001, 0.003, 0.01],
        "estimator__penalty": [None, "l2"],
    }
    search = GridSearchCV(
        estimator=pipeline,
        param_grid=parameters,
        scoring={"AUC": "roc_auc_ovr"},
        refit="AUC",
        cv=5,
        error_score="raise",
    )
    search.fit(x_train, y_train)
    best: Pipeline = search.best_estimator_
    accuracy = accuracy_score(y_test, best.predict(x_test))
    logger.info("best params %s; test accuracy %.4f", search.best_params_, accuracy)
    return best, x_test, y_test


def check_parity(model: Pipeline, onnx_bytes: bytes, x_test: np.ndarray, tolerance: float) -> dict:
    """Compare ONNX Runtime with scikit-learn on the test split; raise if they differ."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {"float_input": x_test.astype(np.float32)})
    sk_labels = model.predict(x_test)
    sk_probabilities = model.predict_proba(x_test)
    max_diff = float(np.max(np.abs(probabilities - sk_probabilities)))
    report = {
        "rows": len(x_test),
        "label_agreement": float(np.mean(labels == sk_labels)),
        "max_abs_probability_diff": max_diff,
        "tolerance": tolerance,
    }
    if not np.array_equal(labels, sk_labels):
        bad = np.flatnonzero(labels != sk_labels).tolist()
        raise SystemExit(f"parity check failed: ONNX labels differ from sklearn on rows {bad}")
    if max_diff > tolerance:
        raise SystemExit(
            f"parity check failed: probabilities differ by {max_diff:.3g} > tolerance {tolerance:g}"
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/models"))
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--pickle", type=Path, help="also save the sklearn pipeline (joblib)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, x_test, _ = train()
    onnx_model = convert_sklearn(
        model,
        initial_types=[("float_input", FloatTensorType([None, len(FEATURES)]))],
        # Without ZipMap skl2onnx would name the outputs label/probabilities; keep the
        # names it gives with ZipMap (and the seed's Go code reads).
        options={id(model): {"zipmap": False}},
        final_types=[
            ("output_label", Int64TensorType([None])),
            ("output_probability", FloatTensorType([None, len(LABELS)])),
        ],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onnx_bytes = onnx_model.SerializeToString()
    report = check_parity(model, onnx_bytes, x_test, args.tolerance)

    folder = args.out / "iris"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.onnx").write_bytes(onnx_bytes)
    (folder / "config.toml").write_text(CONFIG)
    data = load_iris().data
    rows = [FIRST_ROW, data.min(axis=0).round(2).tolist(), data.max(axis=0).round(2).tolist()]
    tensor = {"name": "float_input", "shape": [len(rows), len(FEATURES)], "datatype": "FP32"}
    warmup = {"inputs": [tensor | {"data": [v for row in rows for v in row]}]}
    (folder / "warmup.json").write_text(json.dumps(warmup) + "\n")
    (folder / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.pickle:
        import joblib

        args.pickle.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(model, args.pickle)
    logger.info("wrote %s (parity %s)", folder, json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
