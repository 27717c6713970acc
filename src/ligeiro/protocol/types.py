"""What the codecs read of the objects they encode: typing Protocols, nothing else.

Codecs take the engine's objects (a loaded model version, a version's place in the
index, its statistics) through these, so that ``protocol`` imports nothing of the
repository, scheduling or engine; ``repository.registry.ModelVersion``,
``ModelState`` and ``scheduling.stats.ModelStats`` fit them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np

__all__ = [
    "DurationLike",
    "ModelConfigLike",
    "ServedModel",
    "StatisticsLike",
    "TensorSpecLike",
    "VersionStateLike",
]


class TensorSpecLike(Protocol):
    """A tensor a model takes or gives (``runtime.base.TensorSpec`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> np.dtype: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


class ModelConfigLike(Protocol):
    """What the friendly endpoint and the OpenAPI document read of a model's config.toml."""

    @property
    def features(self) -> list[str] | None: ...
    @property
    def labels(self) -> list[str] | None: ...
    @property
    def platform(self) -> str: ...
    @property
    def version_labels(self) -> Mapping[str, int] | None: ...


class ServedModel(Protocol):
    """A loaded model version, as a codec sees it (``repository.registry.ModelVersion``)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def config(self) -> ModelConfigLike: ...
    @property
    def inputs(self) -> Mapping[str, TensorSpecLike]: ...
    @property
    def input_dtype(self) -> np.dtype | None:
        """The dtype every input has, if they share one."""
        ...
    @property
    def outputs(self) -> Mapping[str, TensorSpecLike]: ...
    @property
    def label_output(self) -> str | None: ...
    @property
    def probability_output(self) -> str | None: ...


class VersionStateLike(Protocol):
    """A version's place in the repository index (``repository.registry.ModelState``)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def is_ready(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def index_reason(self) -> str: ...
    @property
    def provider(self) -> str: ...


class DurationLike(Protocol):
    """A count and its total time in nanoseconds (``scheduling.stats.Duration``)."""

    @property
    def count(self) -> int: ...
    @property
    def ns(self) -> int: ...


class StatisticsLike(Protocol):
    """One version's statistics (``scheduling.stats.ModelStats``)."""

    @property
    def success(self) -> DurationLike: ...
    @property
    def fail(self) -> DurationLike: ...
    @property
    def queue(self) -> DurationLike: ...
    @property
    def compute_infer(self) -> DurationLike: ...
    @property
    def inference_count(self) -> int: ...
    @property
    def execution_count(self) -> int: ...
    @property
    def last_inference_ms(self) -> int: ...
    @property
    def batches(self) -> Mapping[int, DurationLike]: ...
