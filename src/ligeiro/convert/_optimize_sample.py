"""``ligeiro optimize``'s sample: the inputs the reference and the candidate run on (a
file, arrays, or generated from the model's inputs), and which outputs are labels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInputError
from ..repository.config import load_config
from .data import load_sample

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ..runtime.base import TensorSpec

__all__ = [
    "FILE_ROWS",
    "GENERATED_OTHER_DIM",
    "GENERATED_ROWS",
    "SEED",
    "label_outputs",
    "sample_feeds",
]

# A generated sample (no data given): rows on the batch axis, and the size of any other
# axis the graph leaves open. Floats are standard normal, integers 0-9, from this seed.
GENERATED_ROWS = 64
GENERATED_OTHER_DIM = 16
SEED = 0
# Rows drawn from a sample file (CSV, Parquet, NPY), with SEED.
FILE_ROWS = 1024


def _generated(specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    feeds = {}
    for spec in specs:
        shape = tuple(
            (GENERATED_ROWS if axis == 0 else GENERATED_OTHER_DIM) if dim < 0 else dim
            for axis, dim in enumerate(spec.shape)
        )
        kind = spec.dtype.kind
        if kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
        elif kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            raise InvalidInputError(
                f"input {spec.name!r} is {spec.dtype}: a sample cannot be generated for it; "
                "give one (--sample data.csv)"
            )
    return feeds


def _fit(spec: TensorSpec, value: Any, where: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != spec.dtype:
        try:
            array = array.astype(spec.dtype)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"{where}: input {spec.name!r} needs {spec.dtype}, got {array.dtype}: {exc}"
            ) from None
    if not spec.accepts_shape(array.shape):
        raise InvalidInputError(
            f"{where}: input {spec.name!r} needs shape {list(spec.shape)}, got {list(array.shape)}"
        )
    return array


def sample_feeds(
    specs: Sequence[TensorSpec], sample: np.ndarray | Mapping[str, np.ndarray] | Path | None
) -> tuple[dict[str, np.ndarray], str]:
    if sample is None:
        feeds = _generated(specs)
        rows = next(iter(feeds.values())).shape[0] if feeds else 0
        return feeds, f"generated ({rows} rows, seed {SEED}, standard normal floats)"
    where = "the sample"
    given: np.ndarray | Mapping[str, np.ndarray]
    if isinstance(sample, Path):
        where = str(sample)
        loaded = load_sample(sample, rows=FILE_ROWS, seed=SEED)
        if isinstance(loaded, np.ndarray):
            given = loaded
        elif len(specs) == 1:
            given = loaded.to_numpy()
        else:  # one column per input, by name (skl2onnx's one-input-per-column models)
            given = {
                s.name: loaded[s.name].to_numpy().reshape(-1, 1) for s in specs if s.name in loaded
            }
    else:
        given = sample
    if isinstance(given, np.ndarray):
        if len(specs) != 1:
            raise InvalidInputError(
                f"{where}: one array for a model with {len(specs)} inputs "
                f"({', '.join(s.name for s in specs)}); give a mapping by input name"
            )
        feeds = {specs[0].name: _fit(specs[0], given, where)}
    else:
        unknown = sorted(set(given) - {s.name for s in specs})
        missing = [s.name for s in specs if s.name not in given]
        if unknown or missing:
            raise InvalidInputError(
                f"{where}: inputs needed {', '.join(s.name for s in specs)}; "
                f"missing {', '.join(missing) or 'none'}, unknown {', '.join(unknown) or 'none'}"
            )
        feeds = {s.name: _fit(s, given[s.name], where) for s in specs}
    rows = next(iter(feeds.values())).shape[0]
    return feeds, f"{where} ({rows} rows)"


def label_outputs(
    folder: Path, outputs: Sequence[TensorSpec], given: frozenset[str] | None
) -> frozenset[str]:
    if given is not None:
        return given
    names = {s.name for s in outputs if s.dtype.kind in "iu" and "label" in s.name.lower()}
    configured = load_config(folder).label_output
    if configured is not None:
        names.add(configured)
    return frozenset(names)
