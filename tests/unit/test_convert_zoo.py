"""The conversion zoo: each model type converts, passes the parity check, and writes its folder.

Every case trains a small model on one of scikit-learn's bundled datasets (no
download), converts it with ``convert_model`` and checks what the issue asks:
labels agree on every row, probabilities within 1e-5; regression values and decision
scores within 1e-5 relative to their magnitude (the float32 effect ``convert.py``'s
docstring explains, which the report's notes state with the absolute bound).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from ligeiro.convert.convert import convert_model
from ligeiro.errors import ConversionError
from ligeiro.repository.config import load_config

pytest.importorskip("skl2onnx", reason="the convert extra is not installed")

import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_iris,
    load_wine,
)
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.tree import DecisionTreeClassifier

SEED = 0


def _frame(loader: Callable[..., Any]) -> tuple[pd.DataFrame, np.ndarray]:
    """A bundled dataset as a DataFrame whose column names XGBoost and LightGBM accept."""
    data = loader(as_frame=True)
    frame = data.data.rename(columns=lambda c: re.sub(r"\W+", "_", str(c)).strip("_"))
    return frame, data.target.to_numpy()


def _arrays(loader: Callable[..., Any]) -> tuple[np.ndarray, np.ndarray]:
    x, y = loader(return_X_y=True)
    return x, y


# Each case: () -> (source for convert_model, sample, kind); kind is "classifier",
# "scores" (no predict_proba) or "regressor". tmp is where a case saves native files.
Case = Callable[[Path], tuple[Any, Any, str]]


def iris_grid_pipeline(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _frame(load_iris)
    pipeline = Pipeline(
        [("impute", SimpleImputer()), ("scale", StandardScaler()), ("clf", LogisticRegression())]
    )
    search = GridSearchCV(pipeline, {"clf__C": [0.1, 1.0]}, cv=3).fit(x, y)
    return search, x, "classifier"


def wine_svc(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _arrays(load_wine)
    # Not SVC(probability=True): scikit-learn 1.9 deprecates it for this.
    model = make_pipeline(StandardScaler(), CalibratedClassifierCV(SVC(), ensemble=False))
    return model.fit(x, y), x, "classifier"


def wine_svc_scores(tmp: Path) -> tuple[Any, Any, str]:
    """An SVC without probabilities: the graph gives its decision_function scores."""
    x, y = _arrays(load_wine)
    return make_pipeline(StandardScaler(), SVC()).fit(x, y), x, "scores"


def breast_cancer_linear_svc(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _arrays(load_breast_cancer)
    return make_pipeline(StandardScaler(), LinearSVC(random_state=SEED)).fit(x, y), x, "scores"


def wine_decision_tree_random_search(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _arrays(load_wine)
    search = RandomizedSearchCV(
        DecisionTreeClassifier(random_state=SEED),
        {"max_depth": [3, 5, None]},
        n_iter=2,
        cv=3,
        random_state=SEED,
    ).fit(x, y)
    return search, x, "classifier"


def breast_cancer_random_forest(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _frame(load_breast_cancer)
    return RandomForestClassifier(n_estimators=10, random_state=SEED).fit(x, y), x, "classifier"


def breast_cancer_gradient_boosting(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _arrays(load_breast_cancer)
    model = GradientBoostingClassifier(n_estimators=20, random_state=SEED).fit(x, y)
    return model, x, "classifier"


def digits_hist_gradient_boosting(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _arrays(load_digits)
    model = HistGradientBoostingClassifier(max_iter=10, random_state=SEED).fit(x, y)
    return model, x[:300], "classifier"


def iris_knn(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _arrays(load_iris)
    return make_pipeline(StandardScaler(), KNeighborsClassifier(5)).fit(x, y), x, "classifier"


def digits_mlp(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _arrays(load_digits)
    # max_iter is high enough to converge without a ConvergenceWarning (an error here).
    model = MLPClassifier((32,), max_iter=1000, random_state=SEED).fit(x / 16.0, y)
    return model, x[:300] / 16.0, "classifier"


def iris_column_transformer(tmp: Path) -> tuple[Any, Any, str]:
    """Text columns: one-hot and ordinal encoders beside imputed, scaled numbers."""
    x, y = _frame(load_iris)
    rng = np.random.default_rng(SEED)
    x = x.assign(
        colour=rng.choice(["red", "green", "blue"], len(x)),
        size=rng.choice(["S", "M", "L"], len(x)),
    )
    numeric = [c for c in x.columns if c not in ("colour", "size")]
    pipeline = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("num", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
                        ("onehot", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
                        ("ordinal", OrdinalEncoder(), ["size"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    )
    return pipeline.fit(x, y), x, "classifier"


def diabetes_linear_regression(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _frame(load_diabetes)
    return LinearRegression().fit(x, y), x, "regressor"


def diabetes_random_forest(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _arrays(load_diabetes)
    return RandomForestRegressor(n_estimators=10, random_state=SEED).fit(x, y), x, "regressor"


def diabetes_hist_gradient_boosting(tmp: Path) -> tuple[Any, Any, str]:
    x, y = _arrays(load_diabetes)
    return HistGradientBoostingRegressor(max_iter=20).fit(x, y), x, "regressor"


def iris_xgboost_json(tmp: Path) -> tuple[Any, Any, str]:
    """A native XGBoost file: the objective in it picks XGBClassifier."""
    xgboost = pytest.importorskip("xgboost")
    x, y = _arrays(load_iris)
    path = tmp / "iris.json"
    xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(x, y).save_model(path)
    return path, x, "classifier"


def breast_cancer_xgboost_pipeline(tmp: Path) -> tuple[Any, Any, str]:
    """XGBoost inside a Pipeline. No scaler before it: a float32 scaler in the graph
    moves values across the trees' float32 thresholds (scikit-learn scales in float64)."""
    xgboost = pytest.importorskip("xgboost")
    x, y = _frame(load_breast_cancer)
    model = make_pipeline(SimpleImputer(), xgboost.XGBClassifier(n_estimators=10, max_depth=3))
    return model.fit(x, y), x, "classifier"


def diabetes_xgboost_ubj(tmp: Path) -> tuple[Any, Any, str]:
    xgboost = pytest.importorskip("xgboost")
    x, y = _arrays(load_diabetes)
    path = tmp / "diabetes.ubj"
    xgboost.XGBRegressor(n_estimators=10, max_depth=3).fit(x, y).save_model(path)
    return path, x, "regressor"


def wine_lightgbm(tmp: Path) -> tuple[Any, Any, str]:
    lightgbm = pytest.importorskip("lightgbm")
    x, y = _frame(load_wine)
    model = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(x, y)
    return model, x, "classifier"


def diabetes_lightgbm_booster_txt(tmp: Path) -> tuple[Any, Any, str]:
    """A native LightGBM file: a bare Booster."""
    lightgbm = pytest.importorskip("lightgbm")
    x, y = _arrays(load_diabetes)
    booster = lightgbm.train(
        {"objective": "regression", "verbose": -1}, lightgbm.Dataset(x, y), num_boost_round=10
    )
    path = tmp / "diabetes.txt"
    booster.save_model(path)
    return path, x, "regressor"


def breast_cancer_skops(tmp: Path) -> tuple[Any, Any, str]:
    """A skops file of sklearn types only loads without trust."""
    sio = pytest.importorskip("skops.io")
    x, y = _arrays(load_breast_cancer)
    path = tmp / "model.skops"
    sio.dump(make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y), path)
    return path, x, "classifier"


ZOO: list[Case] = [
    iris_grid_pipeline,
    wine_svc,
    wine_svc_scores,
    breast_cancer_linear_svc,
    wine_decision_tree_random_search,
    breast_cancer_random_forest,
    breast_cancer_gradient_boosting,
    digits_hist_gradient_boosting,
    iris_knn,
    digits_mlp,
    iris_column_transformer,
    diabetes_linear_regression,
    diabetes_random_forest,
    diabetes_hist_gradient_boosting,
    iris_xgboost_json,
    breast_cancer_xgboost_pipeline,
    diabetes_xgboost_ubj,
    wine_lightgbm,
    diabetes_lightgbm_booster_txt,
    breast_cancer_skops,
]


@pytest.mark.parametrize("case", ZOO, ids=lambda case: case.__name__)
def test_zoo_converts_with_parity(case: Case, tmp_path: Path) -> None:
    source, sample, kind = case(tmp_path)
    folder = tmp_path / "repo" / case.__name__
    result = convert_model(source, sample, folder)

    fidelity = result.fidelity
    assert fidelity.passed, fidelity.table()
    deltas = {d.name: d for d in fidelity.outputs}
    if kind in ("classifier", "scores"):
        assert deltas["output_label"].agreement == 1.0
    if kind == "classifier":
        assert deltas["output_probability"].max_abs_diff <= 1e-5
        assert result.outputs == ["output_label", "output_probability"]
    else:  # unbounded values: 1e-5 of their magnitude, stated in the notes
        values = deltas["variable" if kind == "regressor" else "output_score"]
        assert values.max_abs_diff <= fidelity.tolerance
        assert any("relative to their magnitude" in note for note in fidelity.notes)

    assert result.model_path == folder / "1" / "model.onnx"
    saved = json.loads(result.report_path.read_text())
    assert saved["passed"] is True
    assert saved["rows"] == len(sample)
    config = load_config(folder)
    if kind != "regressor":
        assert config.label_output == "output_label"
    if isinstance(sample, pd.DataFrame) and not any(
        sample[c].dtype.kind not in "biuf" for c in sample.columns
    ):
        assert config.features == [str(c) for c in sample.columns]
    # The file on disk is the model that was checked: it answers like the report says.
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == result.inputs


def test_zoo_covers_twelve_model_types() -> None:
    assert len(ZOO) >= 12


def test_torch_mlp(tmp_path: Path) -> None:
    torch = pytest.importorskip(
        "torch", reason="PyTorch is installed apart: pip install torch==2.13.0"
    )
    torch.manual_seed(SEED)
    module = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Softmax(dim=1)
    )
    x, _ = _frame(load_iris)
    result = convert_model(module, x, tmp_path / "mlp")
    assert result.fidelity.passed, result.fidelity.table()
    assert result.inputs == ["float_input"]
    assert result.outputs == ["output"]
    assert result.fidelity.outputs[0].max_abs_diff <= 1e-5
    assert load_config(tmp_path / "mlp").features == list(x.columns)


def test_torch_module_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch", reason="PyTorch is installed apart: pip install torch==2.13.0")
    package = tmp_path / "nets_for_test"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    x, _ = _arrays(load_iris)
    result = convert_model("nets_for_test:build", x.astype(np.float32), tmp_path / "net")
    assert result.fidelity.passed, result.fidelity.table()
    assert load_config(tmp_path / "net").features is None


def test_failed_check_writes_nothing_and_shows_the_table(tmp_path: Path) -> None:
    x, y = _arrays(load_iris)
    model = LogisticRegression(max_iter=500).fit(x, y)
    folder = tmp_path / "repo" / "iris"
    # Zero tolerance: float32 arithmetic cannot meet it, so the check fails.
    with pytest.raises(ConversionError, match=r"nothing was written\n(.|\n)*rows: FAILED"):
        convert_model(model, x, folder, tolerance=0.0)
    assert not folder.exists()


def test_versions_and_config_conflicts(tmp_path: Path) -> None:
    x, y = _arrays(load_iris)
    folder = tmp_path / "repo" / "iris"
    model = LogisticRegression(max_iter=500).fit(x, y)
    assert convert_model(model, x, folder).version == 1
    assert convert_model(model, x, folder).version == 2
    with pytest.raises(ConversionError, match=r"iris/2 already exists"):
        convert_model(model, x, folder, version=2)
    names = np.array(["a", "b", "c"])[y]
    other = LogisticRegression(max_iter=500).fit(x, names)
    with pytest.raises(ConversionError, match=r"config.toml exists and does not fit the new model"):
        convert_model(other, x, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2", "config.toml"]
