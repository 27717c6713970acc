"""ONNX Runtime threads and spinning, as a serving worker uses them (docs/adr/0002).

One loop does what a worker's event loop does: run the model, then do Python work (here,
JSON parsing) before the next run. With ``allow_spinning=1`` the intra-op pool threads
busy-wait after each run and take the core the loop needs. The model is a generated
4-layer 512-wide MLP, heavy enough for ORT to use its intra-op pool.

Run: ``taskset -c 0 python -m benchmarks.bench_runtime_threads`` (one core, as a
pinned worker) and without ``taskset`` (two cores).
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ligeiro.runtime.onnx import session_options

ort.set_default_logger_severity(3)  # the override below warns otherwise
rng = np.random.default_rng(0)
nodes, inits, prev = [], [], "x"
for i in range(4):
    w = numpy_helper.from_array(rng.standard_normal((512, 512)).astype(np.float32) * 0.05, f"w{i}")
    inits.append(w)
    nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
    nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
    prev = f"r{i}"
g = helper.make_graph(
    nodes,
    "mlp",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 512])],
    [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["n", 512])],
    inits,
)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
body = json.dumps({"inputs": [{"name": "x", "data": list(range(512))}]})
x = rng.standard_normal((16, 512)).astype(np.float32)
for threads, spin in [(1, "0"), (2, "0"), (2, "1")]:
    opts = session_options(threads)
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)  # overrides "0"
    s = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for _ in range(50):
        s.run(None, {"x": x})
    best = 1e9
    for _round in range(5):
        t = time.perf_counter()
        for _ in range(300):
            s.run(None, {"x": x})
            for _ in range(20):
                json.loads(body)  # the loop's own work between runs
        best = min(best, (time.perf_counter() - t) / 300 * 1e6)
    print(f"threads={threads} spinning={spin}: {best:.0f} us per (run + python work)")
