"""``optimize_model``: each mode writes a version the registry serves, within tolerance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ligeiro.convert.optimize import OptimizationError, optimize_model
from ligeiro.errors import ConversionError, InvalidInputError, ModelNotFoundError
from ligeiro.repository.registry import Registry

# Few runs: these tests check behaviour, benchmarks/bench_optimize.py measures speed.
RUNS = 3


def mlp_model(width: int = 64) -> onnx.ModelProto:
    """x [N, 32] -> Gemm -> Relu -> MatMul + Add -> logits [N, 4], label = ArgMax (int64)."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((32, width)).astype(np.float32) / 6, "w0"),
        numpy_helper.from_array(np.zeros(width, np.float32), "b0"),
        numpy_helper.from_array(rng.standard_normal((width, 4)).astype(np.float32) / 8, "w1"),
        numpy_helper.from_array(np.full(4, 0.1, np.float32), "b1"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["g"]),
        helper.make_node("Relu", ["g"], ["h"]),
        helper.make_node("MatMul", ["h", "w1"], ["m"]),
        helper.make_node("Add", ["m", "b1"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["output_label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("output_label", TensorProto.INT64, ["N"]),
        ],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "tiny"
    (path / "1").mkdir(parents=True)
    onnx.save(mlp_model(), path / "1" / "model.onnx")
    return path


def served_outputs(root: Path, name: str, version: str, x: np.ndarray) -> dict[str, np.ndarray]:
    registry = Registry(root)
    try:
        model = registry.get(name, version)
        values = model.runtime.run({"x": x}, list(model.output_names))
        return dict(zip(model.output_names, values, strict=True))
    finally:
        registry.close()


# int8 flips a label on a row or two of 64 random ones (near-equal logits): 90 % must agree.
@pytest.mark.parametrize(
    ("mode", "tolerance", "agreement"),
    [("graph", 1e-5, 1.0), ("int8", 0.1, 0.9), ("fp16", 0.01, 1.0)],
)
def test_each_mode_writes_a_version_the_registry_serves(
    folder: Path, mode: str, tolerance: float, agreement: float
) -> None:
    result = optimize_model(
        folder,
        mode=mode,  # type: ignore[arg-type]
        tolerance=tolerance,
        runs=RUNS,
        min_agreement=agreement,
    )

    assert result.version == 2
    assert result.passed
    assert (folder / "2" / "model.onnx").is_file()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    x = np.random.default_rng(5).standard_normal((8, 32)).astype(np.float32)
    before = served_outputs(folder.parent, "tiny", "1", x)
    after = served_outputs(folder.parent, "tiny", "2", x)
    assert np.abs(before["logits"] - after["logits"]).max() <= tolerance
    assert after["logits"].dtype == np.float32
    assert {d.name: d.kind for d in result.fidelity.outputs} == {
        "logits": "values",
        "output_label": "label",
    }


def test_int8_shrinks_the_weights(folder: Path) -> None:
    result = optimize_model(
        folder, mode="int8", tolerance=0.1, runs=RUNS, per_channel=True, min_agreement=0.9
    )

    assert result.size_after < result.size_before
    assert result.settings["per_channel"] is True
    assert result.settings["reduce_range"] is True  # seven-bit weights: no u8s8 saturation
    assert result.settings["weight_type"] == "QInt8"


def test_report_is_saved_beside_the_model(folder: Path) -> None:
    result = optimize_model(folder, mode="graph", tolerance=1e-5, runs=RUNS)

    report = json.loads((folder / "2" / "optimize.json").read_text())
    assert report["model"] == "tiny"
    assert report["mode"] == "graph"
    assert report["source_version"] == 1
    assert report["version"] == 2
    assert report["passed"] is True
    assert report["size_before"] == (folder / "1" / "model.onnx").stat().st_size
    assert report["size_after"] == (folder / "2" / "model.onnx").stat().st_size
    assert [lat["rows"] for lat in report["latencies"]] == [1, 64]
    assert all(lat["before_ms"] > 0 and lat["speedup"] > 0 for lat in report["latencies"])
    assert report["fidelity"]["rows"] == 64
    assert report["settings"] == {"level": "ORT_ENABLE_EXTENDED"}
    assert report["sample"].startswith("generated (64 rows")
    assert "p50 batch 64" in result.table()
    assert "PASSED" in result.table()


def test_too_strict_a_tolerance_writes_nothing_and_raises_with_the_report(folder: Path) -> None:
    with pytest.raises(
        OptimizationError, match=r"'logits' max \|diff\| .* > 1e-09; nothing"
    ) as info:
        optimize_model(folder, mode="fp16", tolerance=1e-9, runs=RUNS)

    assert isinstance(info.value, ConversionError)
    assert info.value.result is not None
    assert not info.value.result.passed
    assert info.value.result.version is None
    assert "FAILED" in info.value.result.table()
    assert sorted(p.name for p in folder.iterdir()) == ["1"]


def test_fp16_keeps_float32_inputs_and_outputs(folder: Path) -> None:
    optimize_model(folder, mode="fp16", tolerance=0.01, runs=RUNS)

    model = onnx.load(folder / "2" / "model.onnx")
    types = {
        v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]
    }
    assert types == {
        "x": TensorProto.FLOAT,
        "logits": TensorProto.FLOAT,
        "output_label": TensorProto.INT64,
    }
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)


def test_a_given_version_and_sample_are_used(folder: Path) -> None:
    optimize_model(folder, mode="graph", tolerance=1e-5, runs=RUNS)
    x = np.random.default_rng(1).standard_normal((10, 32))  # float64: cast to the input's FP32

    result = optimize_model(folder, mode="graph", version="1", sample=x, tolerance=1e-5, runs=RUNS)

    assert (result.source_version, result.version) == (1, 3)
    assert result.fidelity.rows == 10
    assert [lat.rows for lat in result.latencies] == [1, 10]


def test_a_sample_file(folder: Path, tmp_path: Path) -> None:
    path = tmp_path / "sample.npy"
    np.save(path, np.ones((5, 32), np.float32))

    result = optimize_model(folder, mode="graph", sample=path, tolerance=1e-5, runs=RUNS)

    assert result.sample == f"{path} (5 rows)"


def test_a_sample_that_does_not_fit_is_refused(folder: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"input 'x' needs shape \[-1, 32\], got \[4, 3\]"):
        optimize_model(folder, mode="graph", sample=np.ones((4, 3)), tolerance=1, runs=RUNS)
    with pytest.raises(InvalidInputError, match="missing x, unknown y"):
        optimize_model(folder, mode="graph", sample={"y": np.ones((4, 32))}, tolerance=1)


def test_an_unknown_version_is_refused(folder: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no version '7'; versions: 1"):
        optimize_model(folder, mode="graph", version="7", tolerance=1)


def test_min_agreement_is_written_into_the_report(folder: Path) -> None:
    result = optimize_model(folder, mode="fp16", tolerance=0.01, runs=RUNS, min_agreement=0.5)

    assert result.passed
    assert "labels must agree on at least 50.00% of rows" in result.fidelity.notes
    with pytest.raises(InvalidInputError, match="min_agreement must be between 0 and 1, got 2"):
        optimize_model(folder, mode="fp16", tolerance=0.01, min_agreement=2)


def test_int8_on_the_example_mlp_reports_label_agreement(examples: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    folder = tmp_path / "mlp"
    shutil.copytree(examples / "mlp", folder)
    digits = load_digits().data[:200]
    try:
        result = optimize_model(
            folder, mode="int8", sample=digits, tolerance=0.1, runs=RUNS, min_agreement=0.98
        )
    except OptimizationError as exc:  # a CPU whose int8 kernels round differently
        if exc.result is None:
            raise
        result = exc.result
    (label,) = [d for d in result.fidelity.outputs if d.name == "output_label"]
    assert label.kind == "label"
    assert label.agreement >= 0.98
    assert "output_label" in result.table()
    assert result.size_after < result.size_before / 3
    assert (result.version is not None) == result.passed
