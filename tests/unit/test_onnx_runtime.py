"""OnnxRuntime's lifetime: ``close`` lets go of the native session at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from onnx import TensorProto, helper

from ligeiro.errors import InferenceError
from ligeiro.runtime.onnx import OnnxRuntime
from ligeiro.runtime.providers import ProviderOptions
from tests.models import write

if TYPE_CHECKING:
    from pathlib import Path


def _echo() -> object:
    """One FP32 input [-1, 2] echoed (I/O binding takes no string tensor)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "echo", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("io_binding", [False, True], ids=["plain", "io-binding"])
def test_a_closed_runtime_runs_nothing(tmp_path: Path, io_binding: bool) -> None:
    """Before, ``close`` dropped ``_session`` while the run kept the native session's
    own method: the model still ran after close, and its memory was never released."""
    path = write(_echo(), tmp_path, "echo")  # type: ignore[arg-type]
    runtime = OnnxRuntime(path, options=ProviderOptions(io_binding=io_binding))
    feeds = {"x": np.array([[1.0, 2.0]], np.float32)}
    (out,) = runtime.run(feeds, ["y"])
    assert out.tolist() == [[1.0, 2.0]]
    runtime.close()
    with pytest.raises(InferenceError, match=r"closed \(unloaded\)"):
        runtime.run(feeds, ["y"])
