"""CatBoost models convert with CatBoost's own ONNX exporter, pass the check and serve.

Each test trains a small CatBoost model on one of scikit-learn's bundled datasets,
saves it as ``.cbm`` (CatBoost's native file, data only), converts it and serves the
result in process: the served answers are compared with CatBoost's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ligeiro import Engine
from ligeiro.cli import main
from ligeiro.convert.convert import convert_model
from ligeiro.errors import ConversionError
from ligeiro.repository.config import load_config

catboost = pytest.importorskip("catboost", reason="the convert extra is not installed")
pytest.importorskip("skl2onnx", reason="the convert extra is not installed")

from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

# allow_writing_files=False: CatBoost writes no catboost_info/ folder where tests run.
SMALL = {
    "iterations": 30,
    "depth": 4,
    "verbose": 0,
    "random_seed": 0,
    "thread_count": 1,
    "allow_writing_files": False,
}


def test_cli_converts_a_cbm_classifier_that_serves_catboosts_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = load_breast_cancer()
    frame = pd.DataFrame(data.data, columns=[f"f{i}" for i in range(30)])
    model = catboost.CatBoostClassifier(**SMALL).fit(frame, data.target)
    model.save_model(str(tmp_path / "bc.cbm"))
    frame.to_csv(tmp_path / "bc.csv", index=False)
    folder = tmp_path / "repo" / "bc"

    main(["convert", str(tmp_path / "bc.cbm"), "--data", str(tmp_path / "bc.csv"),
          "--out", str(folder)])  # fmt: skip  # returns on success (raises on failure)
    out = capsys.readouterr().out
    assert "569 rows: PASSED" in out
    assert "CatBoost's own ONNX exporter" in out
    config = load_config(folder)
    assert config.features == list(frame.columns)
    assert config.labels == ["0", "1"]

    rows = frame.to_numpy(np.float32)
    with Engine.from_repository(tmp_path / "repo") as engine:
        served = engine.infer("bc", {"float_input": rows})
    # CatBoost keeps features as float32 itself: the float32 rows are what it compares.
    expected = model.predict(rows.astype(np.float64)).reshape(-1)
    assert served["output_label"].tolist() == expected.tolist()
    assert served["output_probability"].shape == (569, 2)
    np.testing.assert_allclose(
        served["output_probability"], model.predict_proba(rows.astype(np.float64)), atol=1e-5
    )


def test_text_classes_and_float64_inputs(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = catboost.CatBoostClassifier(**SMALL).fit(x, names)
    folder = tmp_path / "repo" / "iris"
    result = convert_model(model, x, folder, input_dtype="float64")
    assert result.fidelity.passed, result.fidelity.table()
    assert load_config(folder).labels == ["setosa", "versicolor", "virginica"]
    with Engine.from_repository(tmp_path / "repo") as engine:
        served = engine.infer("iris", {"float_input": x})
    assert [str(v) for v in served["output_label"]] == model.predict(x).reshape(-1).tolist()


@pytest.mark.parametrize("input_dtype", ["float32", "float64"])
def test_cbm_regressor_with_large_targets(tmp_path: Path, input_dtype: str) -> None:
    x, y = load_diabetes(return_X_y=True)
    model = catboost.CatBoostRegressor(**SMALL).fit(x, y * 1000)
    model.save_model(str(tmp_path / "d.cbm"))
    folder = tmp_path / "repo" / "diabetes"
    result = convert_model(tmp_path / "d.cbm", x, folder, input_dtype=input_dtype)
    assert result.fidelity.passed, result.fidelity.table()
    assert result.outputs == ["variable"]
    rows = x.astype(input_dtype)
    with Engine.from_repository(tmp_path / "repo") as engine:
        served = engine.infer("diabetes", {"float_input": rows})["variable"]
    assert served.shape == (442, 1)
    expected = model.predict(rows.astype(np.float64))
    # Leaves are summed in float32 in the graph: about 7 significant digits.
    bound = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(served[:, 0], expected, rtol=1e-5, atol=bound)


def test_categorical_features_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    frame = pd.DataFrame({"colour": ["red", "blue", "green"] * 20, "size": np.arange(60.0)})
    model = catboost.CatBoostClassifier(**SMALL).fit(
        frame, np.arange(60) % 2, cat_features=["colour"]
    )
    with pytest.raises(ConversionError, match=r"categorical or text features \(colour\)"):
        convert_model(model, frame, tmp_path / "repo" / "cat")
    assert not (tmp_path / "repo").exists()


def test_a_file_that_is_not_catboost(tmp_path: Path) -> None:
    (tmp_path / "bad.cbm").write_bytes(b"not a model")
    with pytest.raises(ConversionError, match="not a CatBoost model file"):
        convert_model(tmp_path / "bad.cbm", np.zeros((2, 2)), tmp_path / "repo" / "bad")
