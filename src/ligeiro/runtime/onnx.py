"""ONNX Runtime, configured for serving.

Thread settings: each worker process gets ``threads`` intra-op threads (the CLI's
default is the machine's cores divided by the workers) and one inter-op thread.
Spinning is off: ORT's pool threads otherwise busy-wait after every run and take the
core the event loop needs to parse the next request (see docs/adr/0002-runtime-threads.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, final

import numpy as np
import onnxruntime as ort

from ..errors import InferenceError, InvalidInputError, ModelLoadError
from .base import TensorSpec

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

__all__ = ["OnnxRuntime"]

logger = logging.getLogger(__name__)

# ONNX Runtime's type strings for tensors; anything else (sequences, maps) is refused.
_ONNX_TYPES: dict[str, np.dtype] = {
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(string)": np.dtype(object),
}


def session_options(threads: int) -> ort.SessionOptions:
    """Session options for a serving process with ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only; ORT warns on every CPU fallback
    return options


def _spec(arg: ort.NodeArg, path: Path, kind: str) -> TensorSpec:
    dtype = _ONNX_TYPES.get(arg.type)
    if dtype is None:
        hint = " (convert with skl2onnx option zipmap=False)" if "map" in arg.type else ""
        raise ModelLoadError(
            f"{path}: {kind} {arg.name!r} has type {arg.type}; ligeiro serves tensors only{hint}"
        )
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(arg.name, dtype, shape)


@final
class OnnxRuntime:
    """One ONNX model loaded into an ``InferenceSession``.

    Args:
        path: the ``model.onnx`` file.
        threads: intra-op threads for this session.

    Raises:
        ModelLoadError: the file is missing, is not valid ONNX, or has non-tensor IO.
    """

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        if not path.is_file():
            raise ModelLoadError(f"{path}: file not found")
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own pybind classes, not a common base
            raise ModelLoadError(f"{path}: not a loadable ONNX model: {exc}") from None
        # The binding's run, without the wrapper's per-call re-validation of input names
        # (the engine has checked them): a few µs on every request of a tiny model.
        self._run = getattr(self._session, "_sess", self._session).run
        self.inputs = tuple(_spec(a, path, "input") for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a, path, "output") for a in self._session.get_outputs())

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        try:
            return self._run(outputs, inputs, None)  # type: ignore[no-any-return]
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as exc:
            raise InvalidInputError(f"the model rejected the input: {exc}") from None
        except Exception as exc:
            logger.exception("onnxruntime failed")
            raise InferenceError(f"onnxruntime failed: {exc}") from None

    def close(self) -> None:
        del self._session
