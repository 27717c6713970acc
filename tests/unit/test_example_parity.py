"""The iris example refuses to write a model whose ONNX answers differ from sklearn's."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_iris", ROOT / "examples" / "build_iris.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_iris"] = module
    spec.loader.exec_module(module)
    return module


def test_built_model_passed_its_parity_check(examples: Path) -> None:
    report = json.loads((examples / "iris" / "parity.json").read_text())
    assert report["label_agreement"] == 1.0
    assert report["max_abs_probability_diff"] <= 1e-5
    assert report["rows"] == 30


def test_parity_check_catches_a_perturbed_model(examples: Path) -> None:
    build = load_script()
    model, x_test, _ = build.train()
    onnx_model = onnx.load(examples / "iris" / "1" / "model.onnx")
    build.check_parity(model, onnx_model.SerializeToString(), x_test, 1e-5)  # the real one passes
    (classifier,) = [n for n in onnx_model.graph.node if n.op_type == "LinearClassifier"]
    (coefficients,) = [a for a in classifier.attribute if a.name == "coefficients"]
    coefficients.floats[:] = [c * 1.01 for c in coefficients.floats]  # a 1 % drift
    with pytest.raises(SystemExit, match="parity check failed: probabilities differ by"):
        build.check_parity(model, onnx_model.SerializeToString(), x_test, 1e-5)
