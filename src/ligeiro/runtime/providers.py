"""Execution providers: where an ONNX model runs (TensorRT, CUDA or the CPU), by name.

A model lists the providers it may run on, in priority order (``[runtime] providers``
in its ``config.toml``; the server's ``--providers`` when it does not). It runs on the
first one this machine's ONNX Runtime has. ONNX Runtime itself falls back to the CPU
without a word when a provider is missing; ligeiro does not: a list without ``"cpu"``
whose providers are all missing fails to load, naming what it asked for and what it
found, and a model that runs on a later provider of its list says so in the
repository index and the log.

Kept apart from ``ligeiro.runtime.onnx`` so that settings and config parsing do not
import onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DEFAULT_PROVIDERS",
    "GPU_PROVIDERS",
    "PROVIDERS",
    "ProviderOptions",
    "check_providers",
    "uses_gpu",
]

# ligeiro's names for ONNX Runtime's execution providers.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = frozenset({"tensorrt", "cuda"})
DEFAULT_PROVIDERS = ("cpu",)


def check_providers(names: Sequence[str]) -> None:
    """Check a providers list: known names, no repeats, ``"cpu"`` (if any) last.

    Raises:
        ValueError: saying which entry is wrong and what was expected.
    """
    if not names:
        raise ValueError(f"providers is empty; expected some of {', '.join(PROVIDERS)}")
    for i, name in enumerate(names):
        if name not in PROVIDERS:
            raise ValueError(
                f"providers[{i}] {name!r} is not an execution provider; expected one of "
                + ", ".join(repr(p) for p in PROVIDERS)
            )
        if name in names[:i]:
            raise ValueError(f"providers[{i}] {name!r} is listed twice")
    if "cpu" in names and names[-1] != "cpu":
        raise ValueError(
            f"providers {list(names)}: 'cpu' runs every model, so providers after it "
            "would never be used; put it last"
        )


def uses_gpu(names: Sequence[str]) -> bool:
    """Whether a providers list asks for a GPU."""
    return any(name in GPU_PROVIDERS for name in names)


class ProviderOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``[runtime]`` section of a model's ``config.toml``: where and how it runs.

    Attributes:
        providers: execution providers in priority order, from ``"tensorrt"``,
            ``"cuda"``, ``"cpu"``; absent, the server's ``--providers`` (default
            ``["cpu"]``). The model runs on the first one available; without ``"cpu"``
            in the list it fails to load rather than fall back to the CPU.
        device_id: the GPU to run on (CUDA's device number).
        fp16: TensorRT builds fp16 engines (for CUDA, serve an fp16 model instead:
            ``ligeiro optimize --fp16``).
        int8: TensorRT builds int8 engines; the model must carry its own scales
            (a QDQ-quantized graph), as no calibration runs here.
        engine_cache: the folder TensorRT keeps its built engines and timing cache in,
            so that a restart does not rebuild them (minutes for a large model);
            relative to the model folder. Absent: ``<repository>/.engine-cache/
            <model>/<version>`` (hidden folders are not models and are not watched).
        workspace_bytes: the most GPU memory TensorRT may use to build an engine;
            absent, TensorRT's default.
        cuda_graph: capture the model's run as a CUDA graph and replay it (CUDA and
            TensorRT), which saves the kernel launches of small models. It needs fixed
            shapes on every input and output, so no ``[batching]``.
        io_binding: run through ONNX Runtime's I/O binding, which copies inputs to
            the device and outputs back once, straight into numpy arrays (large
            tensors). Absent: on for a GPU provider, off on the CPU.
    """

    providers: list[str] | None = None
    device_id: Annotated[int, msgspec.Meta(ge=0)] = 0
    fp16: bool = False
    int8: bool = False
    engine_cache: str | None = None
    workspace_bytes: Annotated[int, msgspec.Meta(gt=0)] | None = None
    cuda_graph: bool = False
    io_binding: bool | None = None

    def __post_init__(self) -> None:
        if self.providers is not None:
            check_providers(self.providers)
        if (self.fp16 or self.int8 or self.engine_cache or self.workspace_bytes) and (
            self.providers is not None and "tensorrt" not in self.providers
        ):
            raise ValueError(
                "fp16, int8, engine_cache and workspace_bytes are TensorRT's options; "
                f"providers {self.providers} has no 'tensorrt'"
            )
        if self.cuda_graph and self.providers is not None and not uses_gpu(self.providers):
            raise ValueError(
                f"cuda_graph needs 'cuda' or 'tensorrt' in providers; got {self.providers}"
            )
