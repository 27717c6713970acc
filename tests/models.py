"""ONNX models built in the tests with onnx.helper: no file is downloaded."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

# V2 datatype -> ONNX element type, for the identity model that echoes every datatype.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identity_model() -> onnx.ModelProto:
    """Inputs ``in_<DATATYPE>`` [-1, -1] echoed to ``out_<DATATYPE>``, one per V2 datatype."""
    nodes, inputs, outputs = [], [], []
    for name, elem in ONNX_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["batch", "n"]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write(model: onnx.ModelProto, root: Path, name: str, version: int = 1) -> Path:
    path = root / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
