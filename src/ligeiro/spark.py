"""The model of a folder on Apache Spark: ``score(df, model)`` and ``ligeiro score --engine spark``.

``score`` adds ``ligeiro score``'s prediction columns to a DataFrame, batch or structured
streaming alike, with ``DataFrame.mapInArrow``: each Arrow batch goes straight to numpy
and through the same ``Scorer`` (column mapping, validation, prediction columns) and
ONNX Runtime session as ``ligeiro score``. The model folder's files are read once on the
driver and broadcast; each Python worker process loads them into one session on its
first batch and keeps it, keyed by the files' digest, for every later batch and task
(Spark reuses its Python workers by default).

A bad row (a missing value, text that is not a number) fails the task with the same
message as ``ligeiro score``, located by Spark partition (and micro-batch, when
streaming) and the row's 1-based number in it: for a file that one partition reads
whole, its row number in the file.

The workers need ligeiro installed (``pip install 'ligeiro[spark]'``), and a local
master's workers run this Python (``PYSPARK_PYTHON``, when unset, is set to it).
"""

from __future__ import annotations

try:
    import pyspark  # noqa: F401  # checked first, to name the extra that brings it
except ImportError:  # pragma: no cover - depends on the installation
    raise ImportError("ligeiro.spark needs pyspark: pip install 'ligeiro[spark]'") from None

import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from py4j.protocol import Py4JError
from pyspark.errors import PySparkException

from . import errors
from .errors import ConfigError, InferenceError, InvalidInputError
from .repository.config import CONFIG_FILE
from .score.formats import Chunk, format_of, input_files
from .score.formats import check_columns
from .repository.layout import MODEL_FILE, locate
from .score.job import ScoreOptions, ScoreSummary, default_columns, load_model
from .score.rows import Scorer

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from pyspark import Accumulator, Broadcast
    from pyspark.sql import DataFrame, SparkSession

    from .engine import Engine
    from .repository.registry import ModelVersion

__all__ = ["score", "score_files"]

logger = logging.getLogger(__name__)

# Spark's readers for ``ligeiro score``'s formats. CSV is read as text (no inferSchema),
# as ``ligeiro score`` reads it, so a value that is not a number is reported by the
# scorer with its row, not turned into a null; FAILFAST makes a malformed record (a
# CSV row with the wrong number of fields, a line that is not JSON) fail the job.
_SPARK_FORMATS = {"csv": "csv", "parquet": "parquet", "jsonl": "json"}
_READ_OPTIONS: dict[str, dict[str, str]] = {
    "csv": {"header": "true", "mode": "FAILFAST"},
    "parquet": {},
    "jsonl": {"mode": "FAILFAST"},
}
_WRITE_OPTIONS: dict[str, dict[str, str]] = {"csv": {"header": "true"}, "parquet": {}, "jsonl": {}}
_ERROR_LINE = re.compile(r"^ligeiro\.errors\.(\w+): (.+)$", re.MULTILINE)
_SPARK_ERROR_LINE = re.compile(r"\[([A-Z][A-Z0-9_.]+)\] (.*?)(?:\s*SQLSTATE: \w+)?$", re.MULTILINE)
_PYTHON_ERROR_LINE = re.compile(r"^(?:\w+\.)*\w+(?:Error|Exception): .+$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class _ModelFiles:
    """A model version as bytes: its config.toml and its version folder's files."""

    name: str
    version: str
    files: dict[str, bytes]  # path relative to the model folder -> contents

    @property
    def digest(self) -> str:
        content = hashlib.sha256()
        for path, data in sorted(self.files.items()):
            content.update(f"{path}\0{len(data)}\0".encode())
            content.update(data)
        return content.hexdigest()


# This process's loaded models, by digest (and thread count): one ONNX Runtime session
# per Python worker, reused by every batch and task that scores with the same files.
_LOADED: dict[tuple[str, int], tuple[Engine, ModelVersion]] = {}


def _read_model(path: Path, version: str) -> _ModelFiles:
    """The files of ``version`` of the model folder (or version folder) ``path``, laid
    out as a model folder (a flat folder's files are its version 1's)."""
    located, _ = locate(path)
    folder = located.path
    files = {}
    if (folder / CONFIG_FILE).is_file():
        files[CONFIG_FILE] = (folder / CONFIG_FILE).read_bytes()
    source = folder / version
    if not source.is_dir() and (folder / MODEL_FILE).is_file():
        source = folder  # flat: model.onnx at the top
    for file in sorted(source.rglob("*")):
        relative = file.relative_to(source)
        hidden = any(p.startswith(".") or p == "__pycache__" for p in relative.parts)
        if file.is_file() and not hidden and file != folder / CONFIG_FILE:
            files[f"{version}/{relative.as_posix()}"] = file.read_bytes()
    return _ModelFiles(located.name, version, files)


def _loaded(
    digest: str, model: Broadcast[_ModelFiles], threads: int
) -> tuple[Engine, ModelVersion]:
    """The model of ``digest``, loaded from its files on first use in this process."""
    found = _LOADED.get((digest, threads))
    if found is not None:
        return found
    # Only now is the broadcast's value read: a worker that has the model loaded never
    # unpickles the bytes again.
    files = model.value
    with tempfile.TemporaryDirectory(prefix="ligeiro-spark-") as root:
        for name, data in files.files.items():
            target = Path(root, files.name, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        loaded = load_model(Path(root, files.name, files.version), threads=threads)
    logger.info("loaded model %s version %s (%s)", files.name, files.version, digest[:12])
    return _LOADED.setdefault((digest, threads), loaded)


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns (``label_name``) as plain strings: Spark reads no dictionaries."""
    for i, kind in enumerate(table.schema.types):
        if pa.types.is_dictionary(kind):
            table = table.set_column(
                i,
                table.schema.field(i).with_type(kind.value_type),
                table.column(i).cast(kind.value_type),
            )
    return table


def _score_partition(
    batches: Iterator[pa.RecordBatch],
    *,
    digest: str,
    model: Broadcast[_ModelFiles],
    threads: int,
    scorer: dict[str, object],
    source: str | None,
    counter: Accumulator[int] | None,
) -> Iterator[pa.RecordBatch]:
    """mapInArrow's function, on a worker: score one partition's batches in order."""
    from pyspark import TaskContext

    engine, version = _loaded(digest, model, threads)
    scores = Scorer(engine, version, **scorer)  # type: ignore[arg-type]  # from _settings
    context = TaskContext.get()
    where = "Spark partition"
    if context is not None:
        where = f"Spark partition {context.partitionId()}"
        batch_id = context.getLocalProperty("streaming.sql.batchId")
        if batch_id is not None:
            where = f"Spark micro-batch {batch_id}, partition {context.partitionId()}"
    if source is not None:
        where = f"{source} ({where})"
    row = 1
    for batch in batches:
        scored = scores.score(Chunk(where, pa.Table.from_batches([batch]), row))
        row += batch.num_rows
        if counter is not None:
            counter.add(batch.num_rows)
        yield from _plain(scored.table).to_batches()


def _settings(
    version: ModelVersion,
    columns: Sequence[str] | None,
    keep: Sequence[str],
    nulls_as_nan: bool,
) -> dict[str, object]:
    """The Scorer's arguments, besides the model (sent to the workers)."""
    return {
        "columns": list(columns or default_columns(version)),
        "keep": list(keep),
        "on_error": "fail",
        "nulls_as_nan": nulls_as_nan,
    }


def _score(
    df: DataFrame,
    model: str | Path,
    *,
    columns: Sequence[str] | None,
    keep: Sequence[str] | None,
    nulls_as_nan: bool,
    threads: int,
    source: str | None = None,
    counter: Accumulator[int] | None = None,
) -> DataFrame:
    from pyspark.sql.pandas.types import from_arrow_type, to_arrow_schema
    from pyspark.sql.types import StructField, StructType

    path = Path(model)
    # The driver loads the model too: its signature fixes the output schema, and a wrong
    # column shows here, not in a task. Kept in the cache like a worker's (a local
    # master's driver does not score, but a second call reuses it).
    engine, version = load_model(path, threads=threads)
    files = _read_model(path, version.version)
    digest = files.digest
    if (digest, threads) in _LOADED:
        engine.close()
    engine, version = _LOADED.setdefault((digest, threads), (engine, version))
    settings = _settings(version, columns, df.columns if keep is None else keep, nulls_as_nan)
    scorer = Scorer(engine, version, **settings)  # type: ignore[arg-type]
    check_columns(Path(source or "DataFrame"), scorer.read_columns, df.columns)
    df = df.select(*scorer.read_columns)
    empty = to_arrow_schema(df.schema).empty_table()
    output = _plain(scorer.score(Chunk("", empty, 1)).table).schema
    fields = [
        df.schema[name] if name in scorer.keep else StructField(name, from_arrow_type(kind))
        for name, kind in zip(output.names, output.types, strict=True)
    ]
    broadcast = df.sparkSession.sparkContext.broadcast(files)
    function = functools.partial(
        _score_partition,
        digest=digest,
        model=broadcast,
        threads=threads,
        scorer=settings,
        source=source,
        counter=counter,
    )
    return df.mapInArrow(function, StructType(fields))


def score(
    df: DataFrame,
    model: str | Path,
    *,
    columns: Sequence[str] | None = None,
    keep: Sequence[str] | None = None,
    nulls_as_nan: bool = False,
    threads: int = 1,
) -> DataFrame:
    """``df`` with ``ligeiro score``'s prediction columns, computed on Spark's workers.

    Classifiers get ``label``, ``label_name`` (when the config names the classes) and
    ``probability_<class>``; other models one column per output element. Works as it is
    on a streaming DataFrame (``spark.readStream``).

    Args:
        df: the rows to score, batch or streaming.
        model: a model folder (REPO/NAME, its highest version), REPO/NAME/VERSION, or
            a flat folder (model.onnx at the top: version 1), on the driver; its files
            are broadcast to the workers.
        columns: the columns feeding the model, in its order (default: the config's
            ``features``, else the model's input names).
        keep: the columns of ``df`` before the predictions (default: all of them).
        nulls_as_nan: a null in a float feature goes to the model as NaN instead of
            failing the task.
        threads: ONNX Runtime intra-op threads per Python worker (Spark runs one worker
            per task slot).

    Returns:
        A DataFrame of the kept columns then the predictions, evaluated lazily.

    Raises:
        ModelNotFoundError, ModelNotReadyError: the model folder cannot serve.
        InvalidInputError: ``df`` lacks a column, or a kept column clashes with a
            prediction. A bad row fails its task when the DataFrame is evaluated; the
            ``PythonException`` names its partition, row and column.

    Example:
        >>> df = spark.read.parquet("iris.parquet")
        >>> score(df, "examples/models/iris", keep=["id"]).columns
        ['id', 'label', 'label_name', 'probability_iris-setosa', ...]
    """
    return _score(
        df,
        model,
        columns=columns,
        keep=keep,
        nulls_as_nan=nulls_as_nan,
        threads=threads,
    )


@contextlib.contextmanager
def _session(master: str, conf: dict[str, str], *, progress: bool) -> Iterator[SparkSession]:
    """The SparkSession of a ``ligeiro score --engine spark`` run, stopped after it.

    A session already active in this process (a notebook's, a test's) is used as it is,
    with ``conf`` applied, and left running.

    Raises:
        ConfigError: Spark cannot start (no Java 17+, a bad master URL).
    """
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    if master.startswith("local"):
        # A local master's Python workers are this interpreter, which has ligeiro.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    # One line on failure is the CLI's contract: Spark's logs only when asked for
    # (--conf spark.log.level=WARN).
    settings = {"spark.log.level": "OFF", "spark.ui.showConsoleProgress": str(progress).lower()}
    builder = SparkSession.builder.master(master).appName("ligeiro score")
    for key, value in {**settings, **conf}.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except PySparkRuntimeError as exc:
        raise ConfigError(
            f"Spark did not start ({exc.getCondition()}): it needs Java 17 or later "
            f"(java on PATH, or JAVA_HOME)"
        ) from None
    try:
        yield spark
    finally:
        if active is None:
            spark.stop()


def _ligeiro_error(exc: Exception) -> errors.LigeiroError:
    """A failed Spark job as one line: the error a Python worker raised, or Spark's own."""
    text = str(exc)
    raised = _ERROR_LINE.findall(text)
    if raised:  # ligeiro's, with its class: a bad row is an InvalidInputError
        name, message = raised[-1]
        kind = getattr(errors, name, InferenceError)
        return kind(message)
    python = _PYTHON_ERROR_LINE.findall(text)
    if python:  # another Python error in a worker: its last line
        return InferenceError(f"a Spark worker failed: {python[-1]}")
    # Spark's: the outermost error (the file) and the innermost (the record), by class.
    found = [f"[{name}] {message.strip()}" for name, message in _SPARK_ERROR_LINE.findall(text)]
    if not found:
        found = [next((line for line in text.splitlines() if line.strip()), type(exc).__name__)]
    cause = f" (caused by {found[-1]})" if len(found) > 1 and found[-1] != found[0] else ""
    return InvalidInputError(f"Spark: {found[0].strip()}{cause}")


def score_files(
    model: str | Path,
    source: str | Path,
    output: str | Path,
    options: ScoreOptions | None = None,
    *,
    master: str = "local[*]",
    conf: dict[str, str] | None = None,
    progress: bool = False,
) -> ScoreSummary:
    """``ligeiro score --engine spark``: score ``source`` into ``output`` on Spark.

    ``source`` is read with Spark's readers (its files in name order, as ``ligeiro
    score`` reads them); ``output`` is a directory of Spark's part files in the output
    format (``options.output_format``, else ``output``'s extension, else the input's),
    written beside it and moved into place when the job succeeded.

    Raises:
        InvalidInputError: an option that Spark does not take (``workers``, ``on_error=
            "reject"``), a missing column, a bad row (partition, row, column), a
            malformed file; nothing is written then.
        ConfigError: Spark cannot start.
    """
    options = options or ScoreOptions()
    if options.workers != 1:
        raise InvalidInputError(
            "--workers does not apply to --engine spark: the master sets the parallelism "
            "(--master local[N])"
        )
    if options.on_error != "fail":
        raise InvalidInputError("--on-error reject does not apply to --engine spark")
    start = time.monotonic()
    source, output = Path(source), Path(output)
    files, in_fmt = input_files(source, options.input_format)
    out_fmt = options.output_format or (
        format_of(output, None, "output") if output.suffix else in_fmt
    )
    if output.resolve() in {f.resolve() for f in files} or output.resolve() == source.resolve():
        raise InvalidInputError(f"{output}: the output would overwrite the input")
    settings = {
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(options.batch_rows),
        # Without it, a CSV row with too many fields passes (only the columns read are
        # parsed); with it, FAILFAST fails the job on such a row.
        "spark.sql.csv.parser.columnPruning.enabled": "false",
    }
    temp = output.parent / f".{output.name}.{os.getpid()}.tmp"
    with warnings.catch_warnings():
        # pyspark warns on every run that it was not tested with pandas 3; this job
        # uses no pandas.
        warnings.filterwarnings("ignore", "PySpark does not yet fully support", FutureWarning)
        with _session(master, {**settings, **(conf or {})}, progress=progress) as spark:
            counter = spark.sparkContext.accumulator(0)
            try:
                reader = spark.read.options(**_READ_OPTIONS[in_fmt])
                df = reader.format(_SPARK_FORMATS[in_fmt]).load([str(f) for f in files])
                scored = _score(
                    df,
                    model,
                    columns=options.columns,
                    keep=options.keep,
                    nulls_as_nan=options.nulls_as_nan,
                    threads=options.threads,
                    source=str(source),
                    counter=counter,
                )
                writer = scored.write.options(**_WRITE_OPTIONS[out_fmt])
                writer.format(_SPARK_FORMATS[out_fmt]).mode("errorifexists").save(str(temp))
                if output.is_dir():
                    shutil.rmtree(output)
                elif output.exists():
                    output.unlink()
                temp.rename(output)
            except (PySparkException, Py4JError) as exc:
                raise _ligeiro_error(exc) from None
            finally:
                shutil.rmtree(temp, ignore_errors=True)
            rows = int(counter.value)
    return ScoreSummary(
        rows=rows,
        rejected=0,
        files=len(files),
        outputs=(output,),
        rejects=None,
        seconds=time.monotonic() - start,
    )
