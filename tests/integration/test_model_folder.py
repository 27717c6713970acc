"""``ligeiro serve DIR --model-name NAME``: one model's folder served as that model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IRIS_REQUEST, start_server

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def serve_fails(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ligeiro", "serve", *args, "--port", "0", "--grpc-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_versioned_model_folder_answers_v2_and_predict(examples: Path) -> None:
    srv = start_server(examples / "iris", "--model-name", "iris", "--threads", "1")
    try:
        assert srv.get("/v2/models/iris").json()["versions"] == ["1"]
        answer = srv.post("/v2/models/iris/infer", IRIS_REQUEST)
        assert answer.status == 200
        assert answer.json()["outputs"][0]["data"] == [0]
        predicted = srv.post("/v1/models/iris:predict", SETOSA)
        assert predicted.status == 200
        assert predicted.json()["label"] == "iris-setosa"
        assert srv.get("/v2/health/ready").status == 200
    finally:
        assert srv.stop() == 0


def test_flat_model_folder_is_version_one_under_the_given_name(
    tmp_path: Path, examples: Path
) -> None:
    folder = tmp_path / "mnt" / "models"  # KServe's mount: model.onnx at the top
    folder.mkdir(parents=True)
    shutil.copy(examples / "iris" / "1" / "model.onnx", folder)
    for file in (examples / "iris").iterdir():  # config.toml and the warm-up file it names
        if file.is_file():
            shutil.copy(file, folder)
    srv = start_server(folder, "--model-name", "flower", "--workers", "2", "--threads", "1")
    try:
        index = srv.post("/v2/repository/index", b"{}").json()
        assert [(m["name"], m["version"], m["state"]) for m in index] == [("flower", "1", "READY")]
        assert srv.post("/v2/models/flower/versions/1/infer", IRIS_REQUEST).status == 200
        # config.toml at the top still names the labels.
        assert srv.post("/v1/models/flower:predict", SETOSA).json()["label"] == "iris-setosa"
        assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).status == 404
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize(
    ("layout", "args", "message"),
    [
        ("repository", ("--model-name", "iris"), "it looks like a repository (iris): serve it without --model-name"),
        ("versioned", (), "this is one model's folder, not a repository (expected <model>/<version>/model.onnx); to serve it as one model, give it a name (--model-name NAME)"),
        ("flat", (), "this is one model's folder, not a repository"),
        ("both", ("--model-name", "iris"), "both model.onnx and version folders [1]"),
        ("empty", ("--model-name", "iris"), "no model.onnx and no version folders (expected "),
        ("missing", ("--model-name", "iris"), "model folder not found (expected "),
        ("versioned", ("--model-name", "a/b"), "model name 'a/b': expected a non-empty name without '/'"),
    ],
)  # fmt: skip
def test_wrong_layout_says_which_was_expected(
    tmp_path: Path, examples: Path, layout: str, args: tuple[str, ...], message: str
) -> None:
    model = examples / "iris" / "1" / "model.onnx"
    target = tmp_path / "dir"
    if layout == "repository":
        (target / "iris" / "1").mkdir(parents=True)
        shutil.copy(model, target / "iris" / "1")
    elif layout in ("versioned", "both"):
        (target / "1").mkdir(parents=True)
        shutil.copy(model, target / "1")
    if layout in ("flat", "both"):
        target.mkdir(exist_ok=True)
        shutil.copy(model, target)
    if layout == "empty":
        target.mkdir()
    for workers in ("1", "2"):  # the single worker and the supervisor check alike
        result = serve_fails(str(target), *args, "--workers", workers)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
