"""Warm-up: a new version runs once before it takes traffic.

ONNX Runtime allocates its arenas and a Python model fills its caches on the first
run; doing that before the switch keeps the first requests after a reload as fast as
the rest. The sample is the model's ``warmup`` file (a V2 JSON inference request in
the model folder) or, without one, a generated one-row sample: zeros, and the text
"warm-up" for BYTES inputs.

The file is a V2 request, so the warm-up lives here, above both ``repository`` and
``protocol``: the registry runs whatever warm-up its caller hands it
(``Registry.prepare(warm=warm_up)``) and knows no wire format.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .errors import InvalidInputError, LigeiroError, ModelLoadError
from .protocol.codec import decode_infer_request

if TYPE_CHECKING:
    from pathlib import Path

    from .repository.registry import ModelVersion

__all__ = ["generated_sample", "sample", "warm_up"]

logger = logging.getLogger(__name__)


def generated_sample(model: ModelVersion) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in model.inputs.values():
        shape = tuple(1 if dim < 0 else dim for dim in spec.shape)
        if spec.dtype.kind == "O":
            feeds[spec.name] = np.full(shape, "warm-up", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def sample(model: ModelVersion, folder: Path) -> dict[str, np.ndarray]:
    """The inputs ``model`` warms up on: its ``warmup`` file's, or a generated one-row sample.

    Raises:
        ModelLoadError: the warm-up file is unreadable or invalid.
    """
    name = model.config.warmup
    if name is None:
        return generated_sample(model)
    path = folder / name
    try:
        return decode_infer_request(path.read_bytes(), None).inputs
    except OSError as exc:
        raise ModelLoadError(f"{path}: warm-up request unreadable: {exc.strerror}") from None
    except LigeiroError as exc:
        raise ModelLoadError(f"{path}: warm-up request invalid: {exc}") from None


def warm_up(model: ModelVersion, folder: Path) -> None:
    """Run ``model`` once on its sample.

    Raises:
        ModelLoadError: the warm-up file is unreadable or invalid, or the run failed.
    """
    name = f"model {model.name!r} version {model.version}"
    feeds = sample(model, folder)
    try:
        model.runtime.run(feeds, model.output_names)
    except InvalidInputError as exc:
        if model.config.warmup is not None:
            raise ModelLoadError(f"{name}: warm-up request refused: {exc}") from None
        # A generated sample the model does not accept proves nothing either way.
        logger.info("%s: generated warm-up sample refused (%s); give a warmup file", name, exc)
    except LigeiroError as exc:
        raise ModelLoadError(f"{name}: warm-up failed: {exc}") from None
