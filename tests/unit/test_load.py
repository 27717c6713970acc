"""``ligeiro.load``: one model folder in process, the server's runtime and checks."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

import ligeiro

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def iris_test_split() -> np.ndarray:
    """examples/build_iris.py's held-out rows."""
    iris = load_iris()
    x = iris.data.astype(np.float32)
    _, x_test, _, _ = train_test_split(
        x, iris.target, test_size=0.2, random_state=42, stratify=iris.target
    )
    return x_test


@pytest.fixture(scope="module")
def iris(examples: Path) -> ligeiro.Model:
    with ligeiro.load(examples / "iris") as model:
        yield model


def test_the_readme_example(iris: ligeiro.Model) -> None:
    assert iris.predict([SETOSA]).tolist() == ["iris-setosa"]


def test_every_input_shape_gives_the_same_answers(iris: ligeiro.Model) -> None:
    x = iris_test_split()
    expected = iris.predict(x)
    assert len(expected) == 30
    frame = pd.DataFrame(x, columns=FEATURES)[FEATURES[::-1]]  # columns in any order
    assert iris.predict(frame).tolist() == expected.tolist()
    assert iris.predict(frame.to_dict("records")).tolist() == expected.tolist()
    assert iris.predict({f: frame[f].tolist() for f in FEATURES}).tolist() == expected.tolist()
    assert iris.predict(x.tolist()).tolist() == expected.tolist()
    assert iris.predict(SETOSA).tolist() == ["iris-setosa"]  # one dict: one row
    probabilities = iris.predict_proba(frame)
    assert probabilities.shape == (30, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    labels = np.array(iris.labels)[probabilities.argmax(axis=1)]
    assert labels.tolist() == expected.tolist()


def test_predict_equals_the_server(iris: ligeiro.Model, server: object) -> None:
    x = iris_test_split()
    answer = server.post(  # type: ignore[attr-defined]
        "/v1/models/iris:predict",
        {"instances": [dict(zip(FEATURES, map(float, row), strict=True)) for row in x]},
    )
    assert answer.status == 200
    served = [p["label"] for p in answer.json()["predictions"]]
    assert iris.predict(x).tolist() == served


def test_missing_value_is_nan_for_the_imputer(iris: ligeiro.Model) -> None:
    row = dict(SETOSA, petal_width=None)
    assert iris.predict([row]).tolist() == ["iris-setosa"]


def test_infer_takes_raw_tensors_with_the_engines_checks(iris: ligeiro.Model) -> None:
    x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    outputs = iris.infer({"float_input": x})
    assert outputs["output_label"].tolist() == [0]
    assert set(outputs) == {"output_label", "output_probability"}
    with pytest.raises(ligeiro.InvalidInputError, match="expected dtype float32, got float64"):
        iris.infer({"float_input": x.astype(np.float64)})
    with pytest.raises(ligeiro.InvalidInputError, match=r"missing batch axis"):
        iris.infer({"float_input": x[0]})
    with pytest.raises(ligeiro.InvalidInputError, match="unknown input 'x'"):
        iris.infer({"x": x})


def test_metadata(iris: ligeiro.Model) -> None:
    meta = iris.metadata
    assert meta["name"] == "iris"
    assert meta["version"] == "1"
    assert meta["inputs"] == [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["output_label", "output_probability"]
    assert meta["features"] == FEATURES
    assert meta["labels"] == ["iris-setosa", "iris-versicolor", "iris-virginica"]
    assert re.fullmatch(r"[0-9a-f]{64}", iris.sha256)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        ({k: [v] for k, v in SETOSA.items() if k != "petal_width"}, "missing column 'petal_width'"),
        ([dict(SETOSA, colour=1.0)], "row 0: unknown column 'colour'"),
        ([SETOSA, {k: v for k, v in SETOSA.items() if k != "sepal_width"}],
         "row 1: missing column 'sepal_width'"),
        ([SETOSA, dict(SETOSA, sepal_length="5.1")],
         "column 'sepal_length' row 1: expected a number, got str '5.1'"),
        ([[5.1, 3.5, 1.4]], "row 0: expected 4 values, got 3"),
        (np.zeros((2, 5), np.float32), "expected 4 columns, got 5"),
        (np.zeros(4, np.float32), r"expected a 2-D array .* \(one row\? pass \[row\]\)"),
        ([dict(SETOSA, petal_length=True)], "column 'petal_length' row 0: expected a number, got bool"),
        ("5.1,3.5", "expected a DataFrame, a dict of columns, a list of dicts or a 2-D array"),
    ],
)  # fmt: skip
def test_bad_input_says_which_column_and_row(iris: ligeiro.Model, x: object, message: str) -> None:
    with pytest.raises(ligeiro.InvalidInputError, match=message):
        iris.predict(x)


def test_a_string_column_of_a_dataframe(iris: ligeiro.Model) -> None:
    frame = pd.DataFrame([SETOSA, SETOSA])
    frame["sepal_width"] = ["3.5", "oops"]
    with pytest.raises(
        ligeiro.InvalidInputError, match="column 'sepal_width' row 0: expected a number"
    ):
        iris.predict(frame)


def test_a_version_folder_and_a_version(tmp_path: Path, examples: Path) -> None:
    shutil.copytree(examples / "iris", tmp_path / "iris")
    shutil.copytree(tmp_path / "iris" / "1", tmp_path / "iris" / "2")
    assert ligeiro.load(tmp_path / "iris").version == "2"
    assert ligeiro.load(tmp_path / "iris", version=1).version == "1"
    assert ligeiro.load(tmp_path / "iris" / "1").version == "1"
    with pytest.raises(ligeiro.ModelNotFoundError, match="no version 7; versions: 1, 2"):
        ligeiro.load(tmp_path / "iris", version=7)


def test_bad_folders_name_the_file_and_the_reason(tmp_path: Path, examples: Path) -> None:
    with pytest.raises(ligeiro.ModelNotFoundError, match="not a model folder"):
        ligeiro.load(tmp_path)
    folder = tmp_path / "churn"
    (folder / "1").mkdir(parents=True)
    with pytest.raises(ligeiro.ModelLoadError, match=r"churn/1/model.onnx: file not found"):
        ligeiro.load(folder)
    (folder / "1" / "model.pkl").write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(
        ligeiro.ModelLoadError, match=r"model.pkl beside it is a pickle: ligeiro never unpickles"
    ):
        ligeiro.load(folder)
    (folder / "1" / "model.onnx").write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(
        ligeiro.ModelLoadError, match=r"churn/1/model.onnx: a Python pickle, not ONNX"
    ):
        ligeiro.load(folder)
    (folder / "1" / "model.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(
        ligeiro.ModelLoadError, match=r"churn/1/model.onnx: not a loadable ONNX model"
    ):
        ligeiro.load(folder)
    shutil.copy(examples / "iris" / "1" / "model.onnx", folder / "1" / "model.onnx")
    (folder / "config.toml").write_text('featurez = ["a"]\n')
    with pytest.raises(ligeiro.ModelLoadError, match=r"churn/config.toml: .*featurez"):
        ligeiro.load(folder)


def test_the_same_messages_as_the_servers_index(tmp_path: Path) -> None:
    from ligeiro.engine import Engine

    (tmp_path / "churn" / "1").mkdir(parents=True)
    (tmp_path / "churn" / "1" / "model.onnx").write_bytes(pickle.dumps([1]))
    with pytest.raises(ligeiro.ModelLoadError) as raised:
        ligeiro.load(tmp_path / "churn")
    with Engine.from_repository(tmp_path) as engine:
        (state,) = engine.index()
    assert state.reason == str(raised.value)


_IMPORTS = """
import time
start = time.perf_counter()
import ligeiro
model = ligeiro.load(%r)
model.predict([[5.1, 3.5, 1.4, 0.2]])
print(time.perf_counter() - start)
"""


def test_load_imports_no_server_code(examples: Path) -> None:
    """Import + load + one predict, timed; no server, engine or transport module comes in.

    The figure is recorded in docs/benchmarks.md (Cold start): about 0.2 s on an idle
    core. The bound here is loose: CI machines are shared.
    """
    code = _IMPORTS % str(examples / "iris")
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if "|" in line}
    ours = sorted(m for m in imported if m.startswith("ligeiro"))
    from ligeiro.package.wheel import RUNTIME_MODULES

    assert set(ours) <= {f"ligeiro.{m}" if m else "ligeiro" for m in RUNTIME_MODULES}, ours
    for heavy in ("asyncio", "httptools", "uvloop", "grpc", "prometheus_client", "click", "pandas"):
        assert heavy not in imported, heavy
    seconds = float(run.stdout)
    print(json.dumps({"import_and_load_iris_s": round(seconds, 3)}))
    assert seconds < 3.0


def test_a_flat_folder(tmp_path: Path, examples: Path) -> None:
    """model.onnx beside config.toml (what ``serve DIR --model-name`` takes): version 1."""
    flat = tmp_path / "iris"
    flat.mkdir()
    shutil.copy(examples / "iris" / "config.toml", flat)
    shutil.copy(examples / "iris" / "warmup.json", flat)  # the config names it
    shutil.copy(examples / "iris" / "1" / "model.onnx", flat)
    with ligeiro.load(flat) as model:
        assert (model.name, model.version) == ("iris", "1")
        assert model.predict([SETOSA]).tolist() == ["iris-setosa"]
        assert model.sha256 == hashlib.sha256((flat / "model.onnx").read_bytes()).hexdigest()
    (flat / "2").mkdir()
    shutil.copy(flat / "model.onnx", flat / "2")
    with pytest.raises(ligeiro.ModelLoadError, match=r"both model.onnx and version folders \[2\]"):
        ligeiro.load(flat)
