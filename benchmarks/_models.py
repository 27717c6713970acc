"""Generated models for the benchmarks: nothing is downloaded.

``build_mlp`` writes a float32 MLP of MatMul + Add + Relu layers with seeded random
weights; ``build_big_model`` sizes one by its bytes of weights (``bench_workers``),
``bench_batching`` and ``bench_optimize`` use a fixed shape (``--model wide``).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = [
    "BIG_INPUTS",
    "BIG_OUTPUTS",
    "WIDE_WIDTHS",
    "build_big_model",
    "build_mlp",
    "hidden_width",
]

BIG_INPUTS: Final = 256
BIG_OUTPUTS: Final = 16
BIG_HIDDEN_LAYERS: Final = 5  # square hidden x hidden layers: they hold nearly all weights
# The "wide" model: input, two hidden layers, output (about 72 MB of weights).
WIDE_WIDTHS: Final = (256, 4096, 4096, 16)


def build_mlp(path: Path, widths: Sequence[int], *, graph_name: str = "big_mlp") -> int:
    """Write a float32 MLP (MatMul + Add, with Relu between layers) to ``path``.

    ``widths`` is the input width, each hidden width, then the output width: input ``x``
    is FP32 ``[N, widths[0]]`` and output ``y`` FP32 ``[N, widths[-1]]``. The weights are
    random from ``np.random.default_rng(0)``, so no page of them is zero and every page
    counts in RSS. IR version 8 and opset 17: onnxruntime 1.31 rejects the IR version the
    installed onnx writes by default.

    Returns:
        The bytes of the initializers (weights and biases).

    Raises:
        ValueError: fewer than two widths (no layer).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if len(widths) < 2:
        raise ValueError(f"an MLP needs an input and an output width, got {list(widths)}")
    rng = np.random.default_rng(0)
    nodes, initializers = [], []
    current = "x"
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        # He initialisation keeps the activations in range through the Relu layers.
        weight = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
        weight *= np.float32(math.sqrt(2.0 / fan_in))
        bias = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.01)
        initializers += [
            numpy_helper.from_array(weight, f"w{index}"),
            numpy_helper.from_array(bias, f"b{index}"),
        ]
        is_last = index == len(widths) - 2
        nodes += [
            helper.make_node("MatMul", [current, f"w{index}"], [f"m{index}"]),
            helper.make_node("Add", [f"m{index}", f"b{index}"], ["y" if is_last else f"a{index}"]),
        ]
        if not is_last:
            nodes.append(helper.make_node("Relu", [f"a{index}"], [f"h{index}"]))
            current = f"h{index}"
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", widths[-1]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return sum(len(tensor.raw_data) for tensor in initializers)


def hidden_width(target_bytes: float, layers: int = BIG_HIDDEN_LAYERS) -> int:
    """The hidden width whose float32 weights and biases come closest to ``target_bytes``.

    The model holds ``in*w + w`` (first layer), ``layers * (w*w + w)`` and ``w*out + out``
    floats: a quadratic in ``w``, solved here.
    """
    a = layers
    b = BIG_INPUTS + 1 + layers + BIG_OUTPUTS
    c = BIG_OUTPUTS - target_bytes / 4
    return max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))


def build_big_model(path: Path, target_bytes: float) -> int:
    """Write a float32 MLP (MatMul + Add + Relu) of about ``target_bytes`` of weights.

    Input ``x`` is FP32 ``[N, 256]``; output ``y`` is FP32 ``[N, 16]``; between them
    ``BIG_HIDDEN_LAYERS + 1`` hidden layers of ``hidden_width(target_bytes)``. The
    generator (seeded random weights, IR 8, opset 17) is ``_models.build_mlp``.

    Returns:
        The bytes of the initializers (weights and biases).
    """
    width = hidden_width(target_bytes)
    return build_mlp(path, [BIG_INPUTS, *[width] * (BIG_HIDDEN_LAYERS + 1), BIG_OUTPUTS])
