"""What every runtime provides: a signature and a batched ``run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np

__all__ = ["Runtime", "TensorSpec"]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor a model takes or gives; ``-1`` in ``shape`` means any size."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    # The fixed dimensions, (axis, size) each: what accepts_shape compares per request.
    _fixed: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fixed = tuple((axis, size) for axis, size in enumerate(self.shape) if size != -1)
        object.__setattr__(self, "_fixed", fixed)

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        """Whether a concrete shape fits this spec (same rank, fixed dims equal)."""
        if len(shape) != len(self.shape):
            return False
        for axis, size in self._fixed:  # a loop: this runs per request
            if shape[axis] != size:
                return False
        return True


class Runtime(Protocol):
    """A loaded model that runs a batch of named numpy inputs."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def text_inputs(self) -> frozenset[str]:
        """The BYTES inputs it reads as text (``str``; ONNX Runtime's string tensors).

        The engine decodes those from UTF-8 before a run; every other BYTES input
        arrives as the ``bytes`` the request carried.
        """
        ...

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Run the model; return the requested outputs in the order asked."""
        ...

    def close(self) -> None:
        """Release the model's memory and threads."""
        ...
