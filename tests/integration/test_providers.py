"""Execution providers on a CPU-only onnxruntime: asking for a GPU fails or falls back,
explicitly, and every answer says where a model runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import IRIS_REQUEST, start_server

CPU = "CPUExecutionProvider"


def _model(root: Path, name: str, config: str, examples: Path) -> None:
    (root / name / "1").mkdir(parents=True)
    shutil.copy(examples / "iris" / "1" / "model.onnx", root / name / "1" / "model.onnx")
    (root / name / "config.toml").write_text(config)


def test_cuda_without_a_gpu_fails_or_falls_back_as_listed(
    repository: Path, examples: Path
) -> None:
    _model(repository, "cuda-only", '[runtime]\nproviders = ["cuda"]\n', examples)
    _model(
        repository,
        "cuda-then-cpu",
        '[runtime]\nproviders = ["tensorrt", "cuda", "cpu"]\nfp16 = true\n',
        examples,
    )
    srv = start_server(repository)
    try:
        index = {e["name"]: e for e in srv.post("/v2/repository/index", "{}").json()}
        failed = index["cuda-only"]
        assert failed["state"] == "UNAVAILABLE"
        assert "none of the execution providers ['cuda'] can run it" in failed["reason"]
        assert "cuda not available (onnxruntime " in failed["reason"]
        assert CPU in failed["reason"]  # what this onnxruntime has
        assert "add 'cpu' to [runtime] providers" in failed["reason"]
        answer = srv.post("/v2/models/cuda-only/infer", IRIS_REQUEST)
        assert answer.status == 503
        assert "cuda not available" in answer.json()["error"]

        fallback = index["cuda-then-cpu"]
        assert fallback["state"] == "READY"
        assert fallback["reason"].startswith(f"runs on {CPU}: tensorrt, cuda not available")
        assert fallback["parameters"] == {"execution_provider": CPU}
        assert index["iris"] == {
            "name": "iris",
            "version": "1",
            "state": "READY",
            "reason": "",
            "parameters": {"execution_provider": CPU},
        }
        assert srv.post("/v2/models/cuda-then-cpu/infer", IRIS_REQUEST).status == 200
        metadata = srv.get("/v2/models/cuda-then-cpu").json()
        assert metadata["parameters"] == {"execution_provider": CPU}
        metrics = srv.get("/metrics").body.decode()
        assert (
            f'ligeiro_model_execution_provider{{model="cuda-then-cpu",provider="{CPU}",'
            'version="1"} 1.0'
        ) in metrics
        assert 'ligeiro_model_execution_provider{model="cuda-only"' not in metrics
    finally:
        assert srv.stop() == 0
    log = srv.output()
    assert f"model 'cuda-then-cpu' version 1 runs on {CPU}: tensorrt, cuda not available" in log
    assert "model 'cuda-only' version 1 not loaded" in log


def test_server_wide_providers_apply_where_config_names_none(
    repository: Path, examples: Path
) -> None:
    _model(repository, "on-cpu", '[runtime]\nproviders = ["cpu"]\n', examples)
    srv = start_server(repository, "--providers", "cuda")
    try:
        index = {e["name"]: e for e in srv.post("/v2/repository/index", "{}").json()}
        assert index["iris"]["state"] == "UNAVAILABLE"
        assert "none of the execution providers ['cuda']" in index["iris"]["reason"]
        assert index["on-cpu"]["state"] == "READY"
        assert index["on-cpu"]["reason"] == ""
        assert srv.post("/v2/models/on-cpu/infer", IRIS_REQUEST).status == 200
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('[runtime]\nproviders = ["gpu"]\n', "providers[0] 'gpu' is not an execution provider"),
        ('[runtime]\nproviders = ["cpu", "cuda"]\n', "'cpu' runs every model"),
        ('[runtime]\nproviders = []\n', "providers is empty"),
        ('[runtime]\nproviders = ["cuda", "cuda"]\n', "providers[1] 'cuda' is listed twice"),
        ('[runtime]\nproviders = ["cuda"]\nfp16 = true\n', "providers ['cuda'] has no 'tensorrt'"),
        ('[runtime]\nproviders = ["cpu"]\ncuda_graph = true\n', "cuda_graph needs 'cuda'"),
        ("[runtime]\ndevice = 1\n", "unknown field `device`"),
    ],
)
def test_bad_runtime_sections_name_the_file_and_field(
    repository: Path, examples: Path, config: str, message: str
) -> None:
    from ligeiro import Engine
    from ligeiro.errors import ModelNotReadyError

    _model(repository, "bad", config, examples)
    with Engine.from_repository(repository) as engine, pytest.raises(ModelNotReadyError) as info:
        engine.model("bad")
    assert f"{repository}/bad/config.toml: " in str(info.value)
    assert message in str(info.value)


def test_io_binding_gives_the_same_answers(repository: Path, examples: Path) -> None:
    import numpy as np

    from ligeiro import Engine

    _model(repository, "bound", '[runtime]\nproviders = ["cpu"]\nio_binding = true\n', examples)
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    with Engine.from_repository(repository) as engine:
        plain = engine.infer("iris", {"float_input": x})
        bound = engine.infer("bound", {"float_input": x})
        assert bound.model.provider == CPU
        for name in ("output_label", "output_probability"):
            np.testing.assert_array_equal(bound[name], plain[name])
        assert list(bound["output_label"]) == [0, 2]
