"""Converted models served by a real server answer like their originals.

The cases users bring without thinking of them (a HistGradientBoosting on float32 data,
an ``SVC(probability=True)`` behind a scaler, a regressor with large targets) and each
tree family converted with ``input_dtype="float64"`` are converted into one repository,
served by one server, and asked over V2 REST with every row of their data: labels
must equal the original's, probabilities within 1e-5, regression values within 1e-5 of
their magnitude (the graph sums leaves in float32). The last test checks what the
report says about rounding the sample to float32 (information unless strict).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ligeiro.convert.convert import convert_model
from ligeiro.errors import ConversionError
from tests.conftest import Server, start_server

pytest.importorskip("skl2onnx", reason="the convert extra is not installed")

import pandas as pd

from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

SEED = 0
# name -> () -> (fitted model, rows to convert on and send, input dtype)
Case = Callable[[], tuple[Any, np.ndarray, str]]


def _cancer() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return x, y


def _diabetes() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_diabetes(return_X_y=True)
    return x, y


def hgb_on_float32_data() -> tuple[Any, np.ndarray, str]:
    """Issue 20's case: trained on float32 features, served FP32 (the default)."""
    x, y = _cancer()
    x32 = x.astype(np.float32)
    model = HistGradientBoostingClassifier(max_iter=50, random_state=SEED).fit(x32, y)
    return model, x32, "float32"


def svc_probability_pipeline() -> tuple[Any, np.ndarray, str]:
    x, y = load_wine(return_X_y=True)
    with warnings.catch_warnings():  # scikit-learn 1.9 deprecates probability=True
        warnings.simplefilter("ignore", FutureWarning)
        model = make_pipeline(StandardScaler(), SVC(probability=True, random_state=SEED))
        model.fit(x, y)
    return model, x, "float32"


def large_target_regressor() -> tuple[Any, np.ndarray, str]:
    x, y = _diabetes()
    model = HistGradientBoostingRegressor(max_iter=30, random_state=SEED).fit(x, y * 1e6)
    return model, x, "float32"


def _float64(make: Callable[[], Any], data: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Case:
    """A model fitted on float64 data (its library imported when the case runs)."""

    def case() -> tuple[Any, np.ndarray, str]:
        x, y = data()
        return make().fit(x, y), x, "float64"

    return case


def _float64_classifier(make: Callable[[], Any]) -> Case:
    return _float64(make, _cancer)


def _float64_regressor(make: Callable[[], Any]) -> Case:
    return _float64(make, _diabetes)


def _xgboost() -> Any:
    return pytest.importorskip("xgboost")


def _lightgbm() -> Any:
    return pytest.importorskip("lightgbm")


CASES: dict[str, Case] = {
    "hgb-float32-data": hgb_on_float32_data,
    "svc-probability-pipeline": svc_probability_pipeline,
    "large-target-regressor": large_target_regressor,
    "hgb-classifier-f64": _float64_classifier(
        lambda: HistGradientBoostingClassifier(max_iter=30, random_state=SEED)
    ),
    "hgb-regressor-f64": _float64_regressor(
        lambda: HistGradientBoostingRegressor(max_iter=30, random_state=SEED)
    ),
    "rf-classifier-f64": _float64_classifier(
        lambda: RandomForestClassifier(n_estimators=10, random_state=SEED)
    ),
    "rf-regressor-f64": _float64_regressor(
        lambda: RandomForestRegressor(n_estimators=10, random_state=SEED)
    ),
    "gb-classifier-f64": _float64_classifier(
        lambda: GradientBoostingClassifier(n_estimators=20, random_state=SEED)
    ),
    "gb-regressor-f64": _float64_regressor(
        lambda: GradientBoostingRegressor(n_estimators=20, random_state=SEED)
    ),
    "xgb-classifier-f64": _float64_classifier(
        lambda: _xgboost().XGBClassifier(n_estimators=10, max_depth=3)
    ),
    "xgb-regressor-f64": _float64_regressor(
        lambda: _xgboost().XGBRegressor(n_estimators=10, max_depth=3)
    ),
    "lgbm-classifier-f64": _float64_classifier(
        lambda: _lightgbm().LGBMClassifier(n_estimators=20, verbose=-1)
    ),
    "lgbm-regressor-f64": _float64_regressor(
        lambda: _lightgbm().LGBMRegressor(n_estimators=20, verbose=-1)
    ),
}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, dict[str, tuple[Any, np.ndarray, str]]]]:
    """Every case converted (the check must pass) into one repository, and its server."""
    repo = tmp_path_factory.mktemp("served")
    cases = {}
    for name, case in CASES.items():
        try:
            model, rows, dtype = case()
        except pytest.skip.Exception:
            continue
        result = convert_model(model, rows, repo / name, input_dtype=dtype)
        assert result.fidelity.passed, f"{name}\n{result.fidelity.table()}"
        assert result.fidelity.input_rounding is None or dtype == "float32"
        cases[name] = (model, rows, dtype)
    server = start_server(repo, "--threads", "1")
    yield server, cases
    server.stop()


def _infer(server: Server, name: str, rows: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    datatype = "FP64" if dtype == "float64" else "FP32"
    body = {
        "inputs": [
            {
                "name": "float_input",
                "datatype": datatype,
                "shape": list(rows.shape),
                # float(v) of a float32 is that value exactly: the server reads it back
                # to the same float32.
                "data": [float(v) for v in rows.astype(dtype).ravel()],
            }
        ]
    }
    response = server.post(f"/v2/models/{name}/infer", body)
    assert response.status == 200, response.body
    outputs = json.loads(response.body)["outputs"]
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in outputs}


@pytest.mark.parametrize("name", list(CASES))
def test_served_answers_equal_the_original(
    served: tuple[Server, dict[str, tuple[Any, np.ndarray, str]]], name: str
) -> None:
    server, cases = served
    if name not in cases:
        pytest.skip(f"{name}: its library is not installed")
    model, rows, dtype = cases[name]
    answer = _infer(server, name, rows, dtype)
    # What the client sends, as the original sees it: the rows in the served dtype.
    sent = rows.astype(dtype).astype(np.float64)
    if "output_label" in answer:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # SVC's probA_ (see above)
            expected = model.predict(sent)
            probabilities = model.predict_proba(sent)
        assert answer["output_label"].tolist() == expected.tolist()
        np.testing.assert_allclose(answer["output_probability"], probabilities, atol=1e-5)
    else:
        expected = model.predict(sent)
        bound = 1e-5 * max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(answer["variable"][:, 0], expected, rtol=0, atol=bound)


def test_input_rounding_is_reported_with_its_rows_and_fails_only_when_strict(
    tmp_path: Path,
) -> None:
    """Issue 20's CSV: float32 features written as text, read back as float64."""
    x, y = _cancer()
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"f{i}" for i in range(x.shape[1])])
    model = HistGradientBoostingClassifier(max_iter=50, random_state=SEED).fit(frame, y)
    frame.to_csv(tmp_path / "bc.csv", index=False)
    sample = pd.read_csv(tmp_path / "bc.csv")

    result = convert_model(model, sample, tmp_path / "repo" / "bc")
    fidelity = result.fidelity
    assert fidelity.passed, fidelity.table()
    rounding = fidelity.input_rounding
    assert rounding is not None
    assert rounding.changed
    assert not rounding.strict
    labels = next(d for d in rounding.outputs if d.name == "output_label")
    assert labels.disagreements >= 1
    rows = labels.disagreeing_rows
    # The rows it names are those where the original answers differently on the CSV's
    # float64 values and on their float32 rounding.
    as_read = model.predict(sample.iloc[rows])
    as_sent = model.predict(sample.iloc[rows].astype(np.float32).astype(np.float64))
    assert np.all(as_read != as_sent)
    assert "--input-dtype float64" in (rounding.suggestion or "")
    saved = json.loads(result.report_path.read_text())
    assert saved["input_rounding"]["changed"] is True

    with pytest.raises(ConversionError, match="rounding the sample to float32"):
        convert_model(model, sample, tmp_path / "repo" / "strict", strict_input_precision=True)
    assert not (tmp_path / "repo" / "strict").exists()
