"""ONNX Runtime, configured for serving.

Execution providers (``ligeiro.runtime.providers``): a session runs on the first
provider of its list that this onnxruntime has and that starts (CUDA needs a driver and
a GPU, not only ``onnxruntime-gpu``). ONNX Runtime's own fallback is off
(``enable_fallback=0``): it would retry on the CPU and only print a banner. A list that
allows no provider found fails to load, saying what was asked and found; a later one
of the list serves and the runtime's ``fallback`` says why (the registry puts it in the
repository index and the log). A session on a GPU provider keeps ONNX Runtime's CPU
provider for the nodes the GPU one cannot run (ONNX Runtime places them node by node).

Concurrent runs of one session (``[batching] instances``) each take their own CUDA
stream from the session's pool, so batches overlap on one GPU.

Thread settings: each worker process gets ``threads`` intra-op threads (the CLI's
default is the machine's cores divided by the workers) and one inter-op thread.
Spinning is off: ORT's pool threads otherwise busy-wait after every run and take the
core the event loop needs to parse the next request (see docs/adr/0002-runtime-threads.md).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, final

import numpy as np
import onnxruntime as ort

from ..errors import InferenceError, InvalidInputError, ModelLoadError
from .base import TensorSpec
from .providers import DEFAULT_PROVIDERS, GPU_PROVIDERS, PROVIDERS, ProviderOptions

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
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


# Files that unpickle (run code) when loaded: never loaded here.
_PICKLES = {".pkl", ".pickle", ".joblib"}
_NO_PICKLE = (
    "ligeiro never unpickles (it runs code from the file); convert it to ONNX with "
    "`ligeiro convert FILE --trust-pickle --data SAMPLE --out FOLDER`"
)


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


def provider_options(
    name: str, options: ProviderOptions, engine_cache: Path | None
) -> dict[str, str | int | bool]:
    """ONNX Runtime's options for provider ``name`` (``"tensorrt"``, ...) from ``[runtime]``."""
    if name == "tensorrt":
        found: dict[str, str | int | bool] = {
            "device_id": options.device_id,
            "trt_fp16_enable": options.fp16,
            "trt_int8_enable": options.int8,
            "trt_cuda_graph_enable": options.cuda_graph,
        }
        if engine_cache is not None:
            found |= {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(engine_cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(engine_cache),
            }
        if options.workspace_bytes is not None:
            found["trt_max_workspace_size"] = options.workspace_bytes
        return found
    if name == "cuda":
        return {"device_id": options.device_id, "enable_cuda_graph": options.cuda_graph}
    return {}


@final
class OnnxRuntime:
    """One ONNX model loaded into an ``InferenceSession``.

    Args:
        path: the ``model.onnx`` file.
        threads: intra-op threads for this session.
        providers: execution providers in priority order (``"tensorrt"``, ``"cuda"``,
            ``"cpu"``); it runs on the first one available.
        options: the model's ``[runtime]`` options (device, TensorRT precision, ...).
        engine_cache: where TensorRT keeps built engines (created when needed).

    Attributes:
        provider: the provider it runs on, ONNX Runtime's name
            (``"CUDAExecutionProvider"``).
        fallback: why that is not the first of ``providers``; empty when it is.

    Raises:
        ModelLoadError: the file is missing, is not valid ONNX, has non-tensor IO, or
            none of ``providers`` is available (naming what was asked and found).
    """

    def __init__(
        self,
        path: Path,
        *,
        threads: int = 1,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        options: ProviderOptions | None = None,
        engine_cache: Path | None = None,
    ) -> None:
        if not path.is_file():
            pickles = sorted(p.name for p in path.parent.glob("*") if p.suffix in _PICKLES)
            beside = f"; {pickles[0]} beside it is a pickle: {_NO_PICKLE}" if pickles else ""
            raise ModelLoadError(f"{path}: file not found{beside}")
        options = options or ProviderOptions()
        self._session, name, skipped = _session(path, threads, providers, options, engine_cache)
        self.provider = PROVIDERS[name]
        self.fallback = ""
        if skipped:
            self.fallback = f"runs on {self.provider}: " + "; ".join(skipped)
        self.inputs = tuple(_spec(a, path, "input") for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a, path, "output") for a in self._session.get_outputs())
        # String tensors: ONNX Runtime's Python binding takes str, not bytes.
        self.text_inputs = frozenset(s.name for s in self.inputs if s.dtype.kind == "O")
        on_gpu = name in GPU_PROVIDERS
        self._graph: _GraphBuffers | None = None
        if on_gpu and options.cuda_graph:
            variable = [
                f"{s.name} {list(s.shape)}" for s in (*self.inputs, *self.outputs) if -1 in s.shape
            ]
            if variable:
                raise ModelLoadError(
                    f"{path}: cuda_graph replays fixed shapes, but these vary: "
                    + ", ".join(variable)
                )
            self._graph = _GraphBuffers(self._session, self.outputs, options.device_id)
            self.run = self._graph.run  # type: ignore[method-assign]
        elif options.io_binding if options.io_binding is not None else on_gpu:
            self.run = self._run_bound  # type: ignore[method-assign]
        # The binding's run, without the wrapper's per-call re-validation of input names
        # (the engine has checked them): a few µs on every request of a tiny model.
        self._run = getattr(self._session, "_sess", self._session).run

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        # The one path with no I/O binding, so the common case's run has no extra call.
        try:
            return self._run(outputs, inputs, None)  # type: ignore[no-any-return]
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as exc:
            raise InvalidInputError(f"the model rejected the input: {exc}") from None
        except InferenceError:  # closed
            raise
        except Exception as exc:
            logger.exception("onnxruntime failed")
            raise InferenceError(f"onnxruntime failed: {exc}") from None

    def _run_bound(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> list[np.ndarray]:
        """Run through I/O binding: inputs copied to the device once, outputs to numpy once."""
        binding = self._session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in outputs:
            binding.bind_output(name, "cpu")
        _guarded(self._session.run_with_iobinding, binding)
        return binding.copy_outputs_to_cpu()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Release the native session now: its memory, arenas and thread pools.

        ``_run`` is the native session's own method and ``run`` may be bound to the
        graph buffers or to ``_run_bound``: each holds the session, so all go, or
        nothing would be released. A run after this raises InferenceError.
        """
        self._graph = None
        self._run = _closed
        self.__dict__.pop("run", None)  # back to the class's run, which calls _closed
        del self._session


def _closed(*_: object) -> list[np.ndarray]:
    raise InferenceError("the model version is closed (unloaded)")


def _guarded(call: Callable[..., object], *args: object) -> list[np.ndarray]:
    """Call into ONNX Runtime; its errors become the input's fault or an inference error."""
    try:
        return call(*args)  # type: ignore[return-value]
    except ort.capi.onnxruntime_pybind11_state.InvalidArgument as exc:
        raise InvalidInputError(f"the model rejected the input: {exc}") from None
    except Exception as exc:
        logger.exception("onnxruntime failed")
        raise InferenceError(f"onnxruntime failed: {exc}") from None


def _session(
    path: Path,
    threads: int,
    providers: Sequence[str],
    options: ProviderOptions,
    engine_cache: Path | None,
) -> tuple[ort.InferenceSession, str, list[str]]:
    """A session on the first of ``providers`` that is available and starts.

    Returns the session, the provider's name, and why each one before it was skipped.
    """
    available = set(ort.get_available_providers())
    skipped: list[str] = []
    missing = [n for n in providers if PROVIDERS[n] not in available]
    if missing:
        hint = "; a GPU needs pip install 'ligeiro[gpu]'" if set(missing) & GPU_PROVIDERS else ""
        skipped.append(
            f"{', '.join(missing)} not available (onnxruntime {ort.__version__} has "
            f"{', '.join(sorted(available))}{hint})"
        )
    for i, name in enumerate(providers):
        if name in missing:
            continue
        # The later providers of the list take the nodes this one cannot run
        # (TensorRT's unsupported subgraphs go to CUDA); ONNX Runtime adds the CPU.
        chosen = [p for p in providers[i:] if p not in missing]
        if name == "tensorrt" and engine_cache is not None:
            engine_cache.mkdir(parents=True, exist_ok=True)
        listed = [(PROVIDERS[p], provider_options(p, options, engine_cache)) for p in chosen]
        try:
            session = ort.InferenceSession(
                str(path),
                sess_options=session_options(threads),
                providers=listed,
                enable_fallback=0,
            )
        except Exception as exc:  # ORT raises its own pybind classes, not a common base
            if name == "cpu":
                with path.open("rb") as file:
                    magic = file.read(2)
                if len(magic) == 2 and magic[0] == 0x80 and 2 <= magic[1] <= 5:
                    raise ModelLoadError(f"{path}: a Python pickle, not ONNX: {_NO_PICKLE}") from None
                raise ModelLoadError(f"{path}: not a loadable ONNX model: {exc}") from None
            skipped.append(f"{name} did not start: {exc}")
            continue
        running = session.get_providers()[0]
        if running != PROVIDERS[name]:  # not seen with enable_fallback=0; never silent
            skipped.append(f"{name} did not take the model ({running} did)")
            continue
        return session, name, skipped
    raise ModelLoadError(
        f"{path}: none of the execution providers {list(providers)} can run it: "
        + "; ".join(skipped)
        + "; add 'cpu' to [runtime] providers (or --providers) to fall back to the CPU"
    )


@final
class _GraphBuffers:
    """Fixed device buffers bound once, for a session that replays a CUDA graph.

    A captured graph reads and writes the same device addresses on every replay, so
    each run copies the request into the bound input buffers and the outputs out of
    the bound output buffers.
    """

    def __init__(
        self, session: ort.InferenceSession, outputs: tuple[TensorSpec, ...], device_id: int
    ) -> None:
        self._session = session
        self._device_id = device_id
        # One set of buffers: runs take turns (a second batch would overwrite them).
        self._lock = threading.Lock()
        self._binding = session.io_binding()
        self._inputs: dict[str, ort.OrtValue] = {}
        self._outputs = {
            s.name: ort.OrtValue.ortvalue_from_shape_and_type(
                list(s.shape), s.dtype.type, "cuda", device_id
            )
            for s in outputs
        }
        for name, value in self._outputs.items():
            self._binding.bind_ortvalue_output(name, value)

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        with self._lock:
            return self._replay(inputs, outputs)

    def _replay(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> list[np.ndarray]:
        for name, array in inputs.items():
            value = self._inputs.get(name)
            if value is None:  # the first run: allocate and bind the input's buffer
                value = ort.OrtValue.ortvalue_from_numpy(
                    np.ascontiguousarray(array), "cuda", self._device_id
                )
                self._inputs[name] = value
                self._binding.bind_ortvalue_input(name, value)
            else:
                value.update_inplace(np.ascontiguousarray(array))
        _guarded(self._session.run_with_iobinding, self._binding)
        return [self._outputs[name].numpy() for name in outputs]
