"""Generated models for the benchmarks: nothing is downloaded.

``build_mlp`` writes a float32 MLP of MatMul + Add + Relu layers with seeded random
weights; ``bench_workers`` sizes one by its bytes of weights, ``bench_batching`` uses a
fixed shape (``--model wide``).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


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
