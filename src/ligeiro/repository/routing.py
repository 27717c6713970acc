"""Where a model's requests go when they name no version, and what its labels name.

A model's default version is its highest ready one; ``version_labels`` name versions
(``stable = 1``); ``traffic`` splits the requests that name no version by weight, with
a smooth weighted round robin: exact shares, evenly interleaved.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .config import ModelConfig
    from .version import ModelVersion

__all__ = ["Routes", "WeightedRoundRobin"]

logger = logging.getLogger(__name__)


@final
class WeightedRoundRobin:
    """Smooth weighted round robin over versions: exact shares, evenly interleaved."""

    __slots__ = ("_current", "_targets", "_total")

    def __init__(self, targets: list[tuple[ModelVersion, int]]) -> None:
        self._targets = targets
        self._current = [0] * len(targets)
        self._total = sum(weight for _, weight in targets)

    def pick(self) -> ModelVersion:
        current = self._current
        best = 0
        for i, (_, weight) in enumerate(self._targets):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return self._targets[best][0]


@final
class Routes:
    """A model's default version, its labels and its traffic split, from its config.

    Args:
        name: the model's name (for the log).
        config: its config (``None``: no labels, no traffic).
        ready: its ready versions by number.
    """

    __slots__ = ("default", "labels", "split")

    def __init__(
        self, name: str, config: ModelConfig | None, ready: Mapping[str, ModelVersion]
    ) -> None:
        self.default = ready[max(ready, key=int)] if ready else None
        labels = config.version_labels if config is not None else None
        self.labels = {k: str(v) for k, v in (labels or {}).items()}
        self.split: WeightedRoundRobin | None = None
        traffic = config.traffic if config is not None else None
        if not traffic:
            return
        targets = []
        for key, weight in traffic.items():
            version = self.labels.get(key, key)
            if weight and version in ready:
                targets.append((ready[version], weight))
            elif weight:
                logger.warning(
                    "model %r: traffic for %s: version %s is not ready; its share goes "
                    "to the others",
                    name,
                    key,
                    version,
                )
        if targets:
            self.split = WeightedRoundRobin(targets)
