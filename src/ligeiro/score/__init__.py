"""Offline batch scoring: ``ligeiro score MODEL INPUT -o OUTPUT``.

Files (CSV, Parquet, JSON Lines; one file or a directory of them) are read in chunks of
``batch_rows`` rows with pyarrow, so memory stays bounded whatever their size. Each chunk's
feature columns become the model's inputs, the model runs through the same ``Engine.run``
and ONNX Runtime session as the server, and the predictions are written beside the
pass-through columns.

Design of ``workers > 1``: this process reads the files and writes the outputs, in order;
N worker processes (spawned, each loading the model once) convert and validate chunks
and run the model. Chunks go to the pool as they are read, at most two per worker in
flight, and come back in the order they were sent, so the output's rows are in the
input's order and memory stays bounded. Splitting by chunk rather than by file or
row group keeps every worker busy on a single large file as on many small ones.

Bad rows (a missing value, text that is not a number) are reported with their file,
1-based row and column: the run fails on the first one (nothing is written), or with
``on_error="reject"`` they go to a rejects file with an ``error`` column. A file that
lacks a column, or a CSV row with the wrong number of fields, fails the run.
"""

from __future__ import annotations

try:
    import pyarrow  # noqa: F401  # checked first, to name the extra that brings it
except ImportError:  # pragma: no cover - depends on the installation
    raise ImportError("ligeiro score needs pyarrow: pip install 'ligeiro[score]'") from None

from .job import ScoreOptions as ScoreOptions
from .job import ScoreSummary as ScoreSummary
from .job import load_model as load_model
from .job import score_files as score_files

__all__ = ["ScoreOptions", "ScoreSummary", "load_model", "score_files"]
