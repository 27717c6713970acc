"""The engine: resolve a model, validate the request against it, run it.

It knows no transport: REST, gRPC and the in-process API are thin layers over it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, final

from .errors import InvalidInputError
from .repository.registry import ModelState, ModelVersion, Registry

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import TracebackType

    import numpy as np

    from .metrics import Metrics

__all__ = ["Engine", "InferenceResult"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """A model's answer: the version that ran and its named outputs."""

    model: ModelVersion
    outputs: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]


def _check_inputs(model: ModelVersion, inputs: Mapping[str, np.ndarray]) -> None:
    specs = model.inputs
    if inputs.keys() != specs.keys():
        unknown = [n for n in inputs if n not in specs]
        missing = [n for n in specs if n not in inputs]
        parts = [f"unknown input {n!r}" for n in unknown] + [
            f"missing input {n!r}" for n in missing
        ]
        raise InvalidInputError(
            f"model {model.name!r}: {', '.join(parts)}; it takes {', '.join(specs)}"
        )
    for name, array in inputs.items():
        spec = specs[name]
        if array.dtype != spec.dtype and not (spec.dtype.kind == "O" and array.dtype.kind in "OUS"):
            expected = "string" if spec.dtype.kind == "O" else spec.dtype.name
            raise InvalidInputError(
                f"model {model.name!r} input {name!r}: expected dtype {expected}, "
                f"got {array.dtype.name}"
            )
        if not spec.accepts_shape(array.shape):
            hint = " (missing batch axis?)" if len(array.shape) + 1 == len(spec.shape) else ""
            raise InvalidInputError(
                f"model {model.name!r} input {name!r}: expected shape {list(spec.shape)}, "
                f"got {list(array.shape)}{hint}"
            )


@final
class Engine:
    """Serves the models of a repository, in process.

    Args:
        registry: the loaded models.
        metrics: where compute time is recorded, if anywhere.
        clock: monotonic seconds; injectable for tests.

    Example:
        >>> engine = Engine.from_repository("examples/models")
        >>> x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
        >>> engine.infer("iris", {"float_input": x})["output_label"]
        array([0])
    """

    def __init__(
        self,
        registry: Registry,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.registry = registry
        self._metrics = metrics
        self._clock = clock

    @classmethod
    def from_repository(
        cls, root: str | Path, *, threads: int = 1, metrics: Metrics | None = None
    ) -> Engine:
        """Load every model under ``root`` (Triton's ``<model>/<version>/model.onnx``)."""
        return cls(Registry(Path(root), threads=threads), metrics=metrics)

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        """The version that serves ``name`` (``version``, or the default one).

        Raises:
            ModelNotFoundError: no such model or version.
            ModelNotReadyError: it failed to load.
        """
        return self.registry.get(name, version)

    def index(self) -> list[ModelState]:
        """Every model version and whether it is ready."""
        return self.registry.index()

    def versions(self, name: str) -> list[str]:
        """The ready versions of model ``name``, lowest first."""
        return [s.version for s in self.registry.index() if s.name == name and s.is_ready]

    def run(
        self,
        model: ModelVersion,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
    ) -> InferenceResult:
        """Validate ``inputs`` against ``model`` and run it.

        Raises:
            InvalidInputError: an input is unknown, missing, or of the wrong dtype or
                shape, or an output name is unknown.
            InferenceError: the runtime failed.
        """
        _check_inputs(model, inputs)
        if outputs is None:
            names: Sequence[str] = model.output_names
        else:
            names = outputs
            for name in names:
                if name not in model.outputs:
                    raise InvalidInputError(
                        f"model {model.name!r}: unknown output {name!r}; "
                        f"it gives {', '.join(model.outputs)}"
                    )
        start = self._clock()
        arrays = model.runtime.run(inputs, names)
        if self._metrics is not None:
            self._metrics.observe_compute(model.name, model.version, self._clock() - start)
        return InferenceResult(model, dict(zip(names, arrays, strict=True)))

    def infer(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
    ) -> InferenceResult:
        """Run model ``name`` (its default version unless ``version``) on ``inputs``."""
        return self.run(self.model(name, version), inputs, outputs)

    def close(self) -> None:
        """Unload every model."""
        self.registry.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
