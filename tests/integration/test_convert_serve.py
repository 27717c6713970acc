"""A converted model served by ``ligeiro serve`` answers what the original model answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ligeiro.convert.convert import convert_model
from tests.conftest import start_server

pytest.importorskip("skl2onnx", reason="the convert extra is not installed")

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def _iris() -> tuple[pd.DataFrame, np.ndarray]:
    data = load_iris(as_frame=True)
    frame = data.data.set_axis(
        ["sepal_length", "sepal_width", "petal_length", "petal_width"], axis=1
    )
    names = np.asarray(data.target_names)[data.target.to_numpy()]  # text classes
    return frame, names


def test_converted_models_serve_identical_predictions(tmp_path: Path) -> None:
    x, y = _iris()
    numeric = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression()), {"logisticregression__C": [1.0]}
    ).fit(x, y)
    rng = np.random.default_rng(0)
    mixed_x = x.assign(colour=rng.choice(["red", "blue"], len(x)))
    mixed = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), list(x.columns)),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    ).fit(mixed_x, y)
    repository = tmp_path / "models"
    sample = tmp_path / "sample.csv"
    x.assign(species=y).to_csv(sample, index=False)
    first = convert_model(numeric, sample, repository / "iris", drop_columns=("species",))
    second = convert_model(mixed, mixed_x, repository / "mixed")
    assert first.version == second.version == 1
    assert json.loads(first.report_path.read_text())["passed"] is True

    rows = x.iloc[::10]
    server = start_server(repository, "--threads", "1", "--no-grpc")
    try:
        v2 = server.post(
            "/v2/models/iris/infer",
            {
                "inputs": [
                    {
                        "name": "float_input",
                        "shape": list(rows.shape),
                        "datatype": "FP32",
                        "data": rows.to_numpy(np.float32).ravel().tolist(),
                    }
                ]
            },
        )
        assert v2.status == 200, server.output()[-3000:]
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        # Text classes: the label output carries the class names themselves.
        assert outputs["output_label"]["data"] == numeric.predict(rows).tolist()
        probabilities = np.reshape(outputs["output_probability"]["data"], (len(rows), 3))
        np.testing.assert_allclose(probabilities, numeric.predict_proba(rows), atol=1e-5)

        # config.toml's features and labels drive the friendly endpoint.
        friendly = server.post(
            "/v1/models/iris:predict", {"instances": rows.to_dict(orient="records")}
        )
        assert friendly.status == 200, server.output()[-3000:]
        predictions = friendly.json()["predictions"]
        assert [p["label"] for p in predictions] == numeric.predict(rows).tolist()
        assert list(predictions[0]["probabilities"]) == list(numeric.classes_)

        # One [N, 1] input per column, numbers as FP32 and text as BYTES.
        mixed_rows = mixed_x.iloc[::10]
        inputs = [
            {
                "name": column,
                "shape": [len(mixed_rows), 1],
                "datatype": "BYTES" if column == "colour" else "FP32",
                "data": mixed_rows[column].tolist(),
            }
            for column in mixed_rows.columns
        ]
        answer = server.post("/v2/models/mixed/infer", {"inputs": inputs})
        assert answer.status == 200, answer.body
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        assert outputs["output_label"]["data"] == mixed.predict(mixed_rows).tolist()
        probabilities = np.reshape(outputs["output_probability"]["data"], (len(mixed_rows), 3))
        np.testing.assert_allclose(probabilities, mixed.predict_proba(mixed_rows), atol=1e-5)
    finally:
        assert server.stop() == 0
