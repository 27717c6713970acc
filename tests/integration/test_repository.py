"""A broken model beside a good one: reported with its file and reason, never fatal."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from ligeiro import Engine
from tests.conftest import IRIS_REQUEST, start_server


def test_broken_models_beside_a_good_one(repository: Path) -> None:
    (repository / "garbage" / "1").mkdir(parents=True)
    (repository / "garbage" / "1" / "model.onnx").write_bytes(b"this is not onnx")
    (repository / "nofile" / "1").mkdir(parents=True)
    (repository / "empty").mkdir()
    (repository / "badconfig" / "1").mkdir(parents=True)
    (repository / "badconfig" / "1" / "model.onnx").write_bytes(
        (repository / "iris" / "1" / "model.onnx").read_bytes()
    )
    (repository / "badconfig" / "config.toml").write_text(
        'labels = ["a", "b", "c"]\nmax_batch = 4\n'
    )
    (repository / "wronglabels" / "1").mkdir(parents=True)
    (repository / "wronglabels" / "1" / "model.onnx").write_bytes(
        (repository / "iris" / "1" / "model.onnx").read_bytes()
    )
    (repository / "wronglabels" / "config.toml").write_text('labels = ["a", "b"]\n')

    srv = start_server(repository, "--threads", "1")
    try:
        assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).status == 200
        assert srv.get("/v2/health/ready").status == 200

        # Relative to the repository: the server's paths are not for clients (the log
        # keeps them, below).
        expected = {
            "garbage": "garbage/1/model.onnx: not a loadable ONNX model",
            "nofile": "nofile/1/model.onnx: file not found",
            "empty": "empty: no version folders (expected empty/1/model.onnx)",
            "badconfig": "badconfig/config.toml: Object contains unknown field `max_batch`",
            "wronglabels": "wronglabels/config.toml: 2 labels, but output 'output_probability' has 3 classes",
        }
        for name, reason in expected.items():
            for answer in (
                srv.post(f"/v2/models/{name}/infer", IRIS_REQUEST),
                srv.get(f"/v2/models/{name}"),
                srv.get(f"/v2/models/{name}/ready"),
            ):
                assert answer.status == 503, (name, answer.body)
                error = answer.json()["error"]
                assert error.startswith(f"model '{name}' is not ready: {reason}"), error
            assert reason.split(":")[0] in srv.output()  # logged at start-up too
        assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).status == 200
    finally:
        assert srv.stop() == 0


def test_highest_version_is_the_default(repository: Path) -> None:
    model = (repository / "iris" / "1" / "model.onnx").read_bytes()
    (repository / "iris" / "3").mkdir()
    (repository / "iris" / "3" / "model.onnx").write_bytes(model)
    (repository / "iris" / "notaversion").mkdir()
    srv = start_server(repository, "--threads", "1")
    try:
        assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).json()["model_version"] == "3"
        assert (
            srv.post("/v2/models/iris/versions/1/infer", IRIS_REQUEST).json()["model_version"]
            == "1"
        )
        assert srv.get("/v2/models/iris").json()["versions"] == ["1", "3"]
        assert "notaversion: not a version folder" in srv.output()
    finally:
        srv.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_missing_repository_fails_with_one_line(tmp_path: Path, workers: str) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ligeiro",
            "serve",
            str(tmp_path / "nope"),
            "--port",
            "0",
            "--workers",
            workers,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(
        f"error: {tmp_path}/nope: model repository not found (expected a directory)"
    )


def test_a_new_version_warms_up_on_its_warmup_file(repository: Path) -> None:
    """The engine hands the registry its warm-up: the model's V2 ``warmup`` request
    runs before the version serves, and one the model refuses keeps it from serving."""
    iris = repository / "iris"
    engine = Engine.from_repository(repository)
    try:
        shutil.copytree(iris / "1", iris / "2")
        # A warm-up file of the test's own (build_iris.py names one too): the config changes.
        config = [line for line in (iris / "config.toml").read_text().splitlines()
                  if not line.startswith("warmup =")]  # fmt: skip
        (iris / "config.toml").write_text("\n".join([*config, 'warmup = "check.json"', ""]))
        request = '{"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", '
        (iris / "check.json").write_text(request + '"data": [5.1, 3.5, 1.4]}]}')
        staged = asyncio.run(engine.prepare(["iris"]))
        states = {s.version: s for s in staged.states()}
        assert not states["2"].is_ready
        assert "warm-up request invalid" in states["2"].reason
        assert "holds 4 elements, data has 3" in states["2"].reason
        # Version 1's reload failed the same way: its previous load serves on.
        assert states["1"].is_ready
        assert "the new one failed" in states["1"].reason

        (iris / "check.json").write_text(request + '"data": [5.1, 3.5, 1.4, 0.2]}]}')
        staged = asyncio.run(engine.prepare(["iris"]))
        assert {(s.version, s.is_ready, s.reason) for s in staged.states()} == {
            ("1", True, ""),
            ("2", True, ""),
        }
    finally:
        engine.close()
