"""``ligeiro convert`` and ``ligeiro optimize`` as a user runs them: files in, folders out,
exit codes and the report on the terminal."""

from __future__ import annotations

import shutil
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ligeiro import Engine
from ligeiro.cli import main

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, Path]:
    """A fitted iris pipeline saved with joblib, and a CSV sample with a target column."""
    iris = load_iris()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    frame = pd.DataFrame(iris.data.astype(np.float32), columns=FEATURES)
    model.fit(frame, iris.target)
    joblib.dump(model, tmp_path / "iris.joblib")
    frame.assign(species=iris.target).to_csv(tmp_path / "sample.csv", index=False)
    return tmp_path / "iris.joblib", tmp_path / "sample.csv"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``ligeiro ARGV``; its exit code (0 when it returns), stdout and stderr."""
    try:
        main([*argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_convert_refuses_a_pickle_without_trust_and_writes_nothing(
    saved: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, sample = saved
    code, _, err = run(
        capsys, "convert", str(model), "--data", str(sample), "--out", str(tmp_path / "repo/iris")
    )
    assert code == 2
    assert err.startswith("error: ")
    assert "--trust-pickle" in err
    assert not (tmp_path / "repo").exists()


def test_convert_then_optimize_then_serve_in_process(
    saved: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, sample = saved
    folder = tmp_path / "repo" / "iris"
    code, out, err = run(
        capsys, "convert", str(model), "--data", str(sample), "--out", str(folder),
        "--drop-column", "species", "--trust-pickle",
    )  # fmt: skip
    assert code == 0, err
    assert "150 rows: PASSED" in out
    assert f"wrote {folder / '1' / 'model.onnx'}" in out
    assert (folder / "1" / "fidelity.json").is_file()

    code, out, err = run(capsys, "optimize", str(folder), "--mode", "graph", "--tolerance", "1e-6")
    assert code == 0, err
    assert (folder / "2" / "model.onnx").is_file()
    assert (folder / "2" / "optimize.json").is_file()

    row = np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    with Engine.from_repository(tmp_path / "repo") as engine:
        for version in ("1", "2"):
            result = engine.infer("iris", {"float_input": row}, version=version)
            assert result["output_label"].tolist() == [2]


def test_optimize_outside_tolerance_prints_the_report_and_writes_nothing(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mlp"
    shutil.copytree(examples / "mlp", folder)
    code, out, err = run(
        capsys, "optimize", str(folder), "--mode", "int8", "--tolerance", "1e-9", "--runs", "3"
    )
    assert code == 1
    assert "FAILED" in out  # the report, with the differences that refused it
    assert "output_probability" in out
    assert "nothing written" in err
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["1"]


@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """Issue 20's case: an HGB classifier on breast_cancer's float32 features, joblib + CSV."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import HistGradientBoostingClassifier

    folder = tmp_path_factory.mktemp("bc")
    data = load_breast_cancer()
    frame = pd.DataFrame(data.data.astype(np.float32), columns=[f"f{i}" for i in range(30)])
    model = HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(frame, data.target)
    joblib.dump(model, folder / "bc.joblib")
    frame.to_csv(folder / "bc.csv", index=False)
    return folder / "bc.joblib", folder / "bc.csv", pd.read_csv(folder / "bc.csv")


def _convert_bc(
    capsys: pytest.CaptureFixture[str], bc: tuple[Path, Path, pd.DataFrame], out: Path, *extra: str
) -> tuple[int, str, str]:
    model, sample, _ = bc
    return run(
        capsys, "convert", str(model), "--data", str(sample), "--out", str(out),
        "--trust-pickle", *extra,
    )  # fmt: skip


def test_convert_passes_on_what_the_client_sends_and_reports_input_rounding_apart(
    breast_cancer: tuple[Path, Path, pd.DataFrame],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_path, _, frame = breast_cancer
    code, out, err = _convert_bc(capsys, breast_cancer, tmp_path / "repo/bc")
    assert code == 0, err
    assert "569 rows: PASSED" in out
    assert "not checked" in out  # the input-rounding section, information only
    assert "--input-dtype float64" in out  # suggested: rounding changes a label
    # Served, it answers what the original answers on the rows the client sends (FP32).
    rows = frame.to_numpy(np.float32)
    sent = pd.DataFrame(rows.astype(np.float64), columns=frame.columns)
    original = joblib.load(model_path).predict(sent)
    with Engine.from_repository(tmp_path / "repo") as engine:
        result = engine.infer("bc", {"float_input": rows})
    assert result["output_label"].tolist() == original.tolist()


def test_strict_input_precision_fails_on_the_rounding(
    breast_cancer: tuple[Path, Path, pd.DataFrame],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "repo/bc"
    code, _, err = _convert_bc(capsys, breast_cancer, folder, "--strict-input-precision")
    assert code == 1
    assert "rounding" in err
    assert not folder.exists() or not any(folder.iterdir())


def test_input_dtype_float64_serves_double_inputs_equal_on_every_row(
    breast_cancer: tuple[Path, Path, pd.DataFrame],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_path, _, frame = breast_cancer
    folder = tmp_path / "repo/bc"
    code, out, err = _convert_bc(capsys, breast_cancer, folder, "--input-dtype", "float64")
    assert code == 0, err
    assert "569 rows: PASSED" in out
    original = joblib.load(model_path).predict(frame)
    with Engine.from_repository(tmp_path / "repo") as engine:
        result = engine.infer("bc", {"float_input": frame.to_numpy(np.float64)})
    assert result["output_label"].tolist() == original.tolist()
