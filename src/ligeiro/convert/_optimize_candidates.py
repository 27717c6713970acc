"""``ligeiro optimize``'s candidates: a model file made from the reference by ONNX
Runtime's graph optimizations (``graph``), dynamic int8 quantization (``int8``) or a
float16 conversion (``fp16``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..runtime.onnx import session_options

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "INT8_OPS",
    "INT8_PER_CHANNEL_AUTO",
    "INT8_WEIGHT_TYPE",
    "optimize_graph",
    "preprocess",
    "quantize",
    "to_fp16",
]

# Dynamic quantization touches only these: ORT's integer kernels pay off on matrix
# products; ConvInteger on CPU is usually slower than float Conv.
INT8_OPS = ("MatMul", "Gemm")
# Defaults chosen by benchmarks/bench_optimize.py's sweep (docs/adr/0006-optimize.md).
INT8_WEIGHT_TYPE = "QInt8"
# Per-channel scales put every column's largest weight at +-127; on x86 without VNNI,
# ORT's u8 x s8 kernel (VPMADDUBSW) then saturates its 16-bit pair sums (a max |diff| of
# 0.29 against 0.03 on the tests' small MLP). Seven-bit weights (reduce_range) avoid it,
# so per-channel always goes with reduce_range; per-tensor keeps the full eight bits.
# per_channel=None tries these in order and keeps the first within tolerance.
INT8_PER_CHANNEL_AUTO = (False, True)


def optimize_graph(source: Path, out: Path, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    options = session_options(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
    return {"level": "ORT_ENABLE_EXTENDED"}


def preprocess(source: Path, out: Path) -> str | None:
    """ORT's quantization pre-processing; the reason when it cannot run, else None."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # Symbolic shape inference needs sympy, which ligeiro does not install; ONNX shape
        # inference and ORT's basic optimizations are the parts that matter for MatMul/Gemm.
        quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    except Exception as exc:  # it raises whatever onnx or ORT raised
        return f"{type(exc).__name__}: {exc}"
    return None


def quantize(
    source: Path, out: Path, *, per_channel: bool, weight_type: str, reduce_range: bool
) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quant_logger = logging.getLogger()  # quantize_dynamic logs on the root logger
    previous = quant_logger.level
    # It asks on every call to "consider pre-processing", which preprocess has done.
    quant_logger.setLevel(max(previous, logging.ERROR))
    try:
        quantize_dynamic(
            str(source),
            str(out),
            op_types_to_quantize=list(INT8_OPS),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType[weight_type],
            # Tensors that shape inference cannot type (after an ai.onnx.ml node such as
            # skl2onnx's Scaler) are float: the quantizer gives up on them otherwise.
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        quant_logger.setLevel(previous)


def to_fp16(source: Path, out: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(out))
    return {"keep_io_types": True}
