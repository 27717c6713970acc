"""Sample data for conversion and optimization: CSV, Parquet or NPY, all rows or a sample.

CSV and Parquet become a pandas ``DataFrame`` (column names matter: a pipeline with a
``ColumnTransformer`` selects by name, and they become the model's feature names); NPY
becomes an array.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

__all__ = ["load_sample"]

_READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npy": "npy"}


def load_sample(
    path: Path, *, rows: int | None = None, seed: int = 0, drop: tuple[str, ...] = ()
) -> pd.DataFrame | np.ndarray:
    """Read ``path``; keep ``rows`` rows drawn at random (with ``seed``) when given.

    Args:
        path: a ``.csv``, ``.parquet`` / ``.pq`` or ``.npy`` file.
        rows: how many rows to keep (all when ``None`` or more than there are).
        seed: for the draw, so a report can be reproduced.
        drop: columns to leave out (a target column kept in the file, for instance).

    Raises:
        InvalidInputError: an unknown extension, an unreadable file, a missing column
            to drop, or no rows.
    """
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise InvalidInputError(
            f"{path}: sample data must be .csv, .parquet or .npy, "
            f"got {path.suffix or 'no extension'}"
        )
    try:
        if kind == "npy":
            data: pd.DataFrame | np.ndarray = np.load(path, allow_pickle=False)
        else:
            import pandas as pd

            data = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: cannot read the sample: {exc}") from None
    if drop:
        if isinstance(data, np.ndarray):
            raise InvalidInputError(f"{path}: an .npy sample has no named columns to drop")
        missing = [c for c in drop if c not in data.columns]
        if missing:
            raise InvalidInputError(
                f"{path}: no column {', '.join(map(repr, missing))} to drop; "
                f"columns: {', '.join(map(str, data.columns))}"
            )
        data = data.drop(columns=list(drop))
    count = len(data)
    if count == 0:
        raise InvalidInputError(f"{path}: the sample has no rows")
    if rows is not None and rows < count:
        picked = np.sort(np.random.default_rng(seed).choice(count, size=rows, replace=False))
        data = data[picked] if isinstance(data, np.ndarray) else data.iloc[picked]
    return data
