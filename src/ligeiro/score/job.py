"""One ``ligeiro score`` run: resolve the model, read, score in order, write atomically."""

from __future__ import annotations

import collections
import logging
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, final

from ..engine import Engine
from ..errors import InferenceError, InvalidInputError, LigeiroError, ModelNotFoundError
from ..repository.layout import locate
from .formats import FORMATS, Chunk, Format, TableWriter, format_of, input_files, read_chunks
from .formats import total_rows as count_rows
from .progress import Progress
from .rows import OnError, Scored, Scorer, rejects_schema

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from concurrent.futures import Future

    import pyarrow as pa

    from ..repository.registry import ModelVersion

__all__ = ["ScoreOptions", "ScoreSummary", "default_columns", "load_model", "score_files"]

logger = logging.getLogger(__name__)

_EXTENSIONS: dict[Format, str] = {"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoreOptions:
    """How to score; every field has the CLI's default.

    Attributes:
        columns: file columns feeding the model, in its order (default: the config's
            ``features``, else the model's input names).
        keep: columns copied to the output before the predictions.
        input_format, output_format: ``"csv"``, ``"parquet"`` or ``"jsonl"`` (default:
            from the extension; a directory output takes the input's).
        batch_rows: rows per model run (and per chunk read).
        workers: processes that score (1: this process alone).
        threads: ONNX Runtime intra-op threads per worker.
        on_error: ``"fail"`` stops at the first bad row; ``"reject"`` writes bad rows
            to ``rejects`` and scores the rest.
        rejects: the rejects file (required with ``on_error="reject"``).
        nulls_as_nan: a missing value in a float feature goes to the model as NaN (for
            models with an imputer) instead of making the row bad.
    """

    columns: Sequence[str] | None = None
    keep: Sequence[str] = ()
    input_format: Format | None = None
    output_format: Format | None = None
    batch_rows: int = 65536
    workers: int = 1
    threads: int = 1
    on_error: OnError = "fail"
    rejects: Path | None = None
    nulls_as_nan: bool = False


@dataclass(frozen=True, slots=True)
class ScoreSummary:
    """What a run did."""

    rows: int
    rejected: int
    files: int
    outputs: tuple[Path, ...]
    rejects: Path | None
    seconds: float

    def line(self) -> str:
        """One line for the terminal."""
        where = str(self.outputs[0]) if len(self.outputs) == 1 else f"{len(self.outputs)} files"
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"scored {self.rows:,} rows from {self.files} file{'s' if self.files > 1 else ''} "
            f"into {where} in {self.seconds:.2f} s ({rate:,.0f} rows/s)"
        )
        if self.rejects is not None:
            text += f"; {self.rejected:,} rejected into {self.rejects}"
        return text


def load_model(path: Path, *, threads: int = 1) -> tuple[Engine, ModelVersion]:
    """Load the model folder (REPO/NAME, or a flat one with ``model.onnx`` at the top)
    or version folder ``path`` into an engine of its own.

    The engine serves that folder alone, as ``serve DIR --model-name NAME`` does: the
    other models of its repository are not loaded.

    Raises:
        ModelNotFoundError: ``path`` is not a model or version folder.
        ModelNotReadyError: the version fails to load (the message says why).
    """
    folder, number = locate(path)
    version = None if number is None else str(number)
    engine = Engine.from_repository(folder.path, threads=threads, model_name=folder.name)
    try:
        return engine, engine.model(folder.name, version)
    except LigeiroError:
        engine.close()
        raise


def default_columns(model: ModelVersion) -> list[str]:
    """The columns a model reads by default: its config's features, else one per input."""
    if model.config.features is not None:
        return list(model.config.features)
    specs = list(model.inputs.values())
    if len(specs) == 1 and len(specs[0].shape) == 2 and specs[0].shape[1] != 1:
        raise InvalidInputError(
            f"model {model.name!r}: its config.toml names no features, so the columns that "
            f"feed input {specs[0].name!r} {list(specs[0].shape)} are unknown; pass --columns"
        )
    return [s.name for s in specs]


def _outputs(
    files: Sequence[Path], source: Path, output: Path, in_fmt: Format, out_fmt: Format | None
) -> tuple[list[Path], Format]:
    """One output per input file (a directory output), or one output for them all."""
    if output.is_dir() or (source.is_dir() and not output.suffix):
        fmt = out_fmt or in_fmt
        paths = [output / f"{f.stem}{_EXTENSIONS[fmt]}" for f in files]
        if len(set(paths)) != len(paths):
            raise InvalidInputError(f"{source}: two input files share a name; use a file output")
    else:
        fmt = format_of(output, out_fmt, "output")
        paths = [output] * len(files)
    inputs = {f.resolve() for f in files}
    for path in paths:
        if path.resolve() in inputs:
            raise InvalidInputError(f"{path}: the output would overwrite an input file")
    return paths, fmt


_WORKER: list[Scorer] = []


def _start_worker(model: Path, threads: int, scorer: dict[str, object]) -> None:
    engine, version = load_model(model, threads=threads)
    _WORKER.append(Scorer(engine, version, **scorer))  # type: ignore[arg-type]


def _save(table: pa.Table, path: Path) -> Path:
    """``table`` as an uncompressed Arrow IPC file: a memcpy to write, a mmap to read."""
    import pyarrow as pa

    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)
    return path


def _load(path: Path) -> pa.Table:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    path.unlink()  # the mapping stays valid while the table lives
    return table


def _score_in_worker(chunk: Chunk, table_path: Path) -> tuple[Path, pa.Table | None]:
    """Score the chunk saved at ``table_path``; the output goes back the same way."""
    chunk.table = _load(table_path)
    scored = _WORKER[0].score(chunk)
    return _save(scored.table, table_path.with_suffix(".out")), scored.rejects


@final
class _Job:
    """The writers of a run, and what it has counted."""

    def __init__(self, scorer: Scorer, outputs: list[Path], fmt: Format, rejects: Path | None):
        self.scorer = scorer
        self.writers = {p: TableWriter(p, fmt) for p in dict.fromkeys(outputs)}
        self.rejects = (
            TableWriter(rejects, format_of(rejects, None, "rejects")) if rejects else None
        )
        self.rejected = 0

    def take(self, output: Path, scored: Scored) -> int:
        self.writers[output].write(scored.table)
        if scored.rejects is not None and scored.rejects.num_rows:
            assert self.rejects is not None
            self.rejects.write(scored.rejects)
            self.rejected += scored.rejects.num_rows
            return int(scored.table.num_rows + scored.rejects.num_rows)
        return int(scored.table.num_rows)

    def finish(self, empty: Chunk) -> None:
        """Give every output a file (an empty input gets an empty one), then commit all."""
        if any(w.rows == 0 for w in self.writers.values()):
            schema = self.scorer.score(empty).table.schema
            for writer in self.writers.values():
                writer.ensure_open(schema)
        if self.rejects is not None:
            schema = rejects_schema(self.scorer.read_columns)
            self.rejects.ensure_open(schema)
        for writer in self.writers.values():
            writer.commit()
        if self.rejects is not None:
            self.rejects.commit()

    def discard(self) -> None:
        for writer in self.writers.values():
            writer.discard()
        if self.rejects is not None:
            self.rejects.discard()


def _empty_chunk(scorer: Scorer) -> Chunk:
    import pyarrow as pa

    columns = scorer.read_columns
    return Chunk("", pa.table({c: pa.array([], pa.string()) for c in columns}), 1)


def _in_order(
    chunks: Iterator[Chunk], model: Path, options: ScoreOptions, scorer: Scorer
) -> Iterator[tuple[str, Scored]]:
    """Scored chunks in input order, from this process or from ``options.workers``."""
    if options.workers <= 1:
        for chunk in chunks:
            yield chunk.file, scorer.score(chunk)
        return
    settings: dict[str, object] = {
        "columns": scorer.columns,
        "keep": scorer.keep,
        "on_error": scorer.on_error,
        "nulls_as_nan": scorer.nulls_as_nan,
    }
    # spawn, not fork: this process has ONNX Runtime's thread pools, which fork does
    # not copy safely. Each worker loads the model once, in its initializer.
    pool = ProcessPoolExecutor(
        options.workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(model, options.threads, settings),
    )
    pending: collections.deque[tuple[str, Future[tuple[Path, pa.Table | None]]]]
    pending = collections.deque()
    # Chunks travel as Arrow IPC files in a private folder, not pickled through the
    # pool's pipes: a pipe moves ~1 GB of a 10M-row file in 64 KiB pieces between
    # Python threads, which made two workers slower than one.
    exchange = tempfile.TemporaryDirectory(prefix="ligeiro-score-")
    try:
        for number, chunk in enumerate(chunks):
            path = _save(chunk.table, Path(exchange.name) / f"{number}.arrow")
            chunk.table = None  # the worker reads it from path
            pending.append((chunk.file, pool.submit(_score_in_worker, chunk, path)))
            # Two chunks per worker in flight: each has the next one queued when it
            # finishes, and memory and disk stay bounded whatever the input's size.
            if len(pending) >= 2 * options.workers:
                yield _collect(*pending.popleft())
        while pending:
            yield _collect(*pending.popleft())
    except BrokenProcessPool as exc:
        raise InferenceError(f"a scoring worker died: {exc}") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        exchange.cleanup()


def _collect(file: str, future: Future[tuple[Path, pa.Table | None]]) -> tuple[str, Scored]:
    path, rejects = future.result()
    return file, Scored(_load(path), rejects)


def score_files(
    model: str | Path,
    source: str | Path,
    output: str | Path,
    options: ScoreOptions | None = None,
    *,
    progress: IO[str] | None = None,
) -> ScoreSummary:
    """Score every row of ``source`` with ``model`` and write the predictions to ``output``.

    Args:
        model: a model folder (REPO/NAME) or one of its version folders (REPO/NAME/1).
        source: a CSV, Parquet or JSON Lines file, or a directory of them.
        output: a file (every input's rows, in order), or a directory (one file per
            input file, named after it).
        options: columns, pass-through, batch size, workers, bad-row handling.
        progress: where to draw a progress line (stderr), or None.

    Returns:
        The rows scored and rejected, and the files written.

    Raises:
        ModelNotFoundError, ModelNotReadyError: the model folder cannot serve.
        InvalidInputError: a bad row (with ``on_error="fail"``: file, row, column), a
            missing column, an unreadable file; nothing is written then.
        InferenceError: the runtime failed.

    Example:
        >>> score_files("examples/models/iris", "iris.csv", "scored.parquet").rows
        150
    """
    options = options or ScoreOptions()
    model, source, output = Path(model), Path(source), Path(output)
    if options.on_error == "reject" and options.rejects is None:
        raise InvalidInputError("--on-error reject needs --rejects PATH (where bad rows go)")
    if options.batch_rows < 1 or options.workers < 1 or options.threads < 1:
        raise InvalidInputError("batch_rows, workers and threads must be at least 1")
    start = time.monotonic()
    files, in_fmt = input_files(source, options.input_format)
    outputs, out_fmt = _outputs(files, source, output, in_fmt, options.output_format)
    rejects = options.rejects if options.on_error == "reject" else None
    if rejects is not None and rejects.suffix.lower() not in FORMATS:
        raise InvalidInputError(
            f"{rejects}: the rejects file needs a .csv, .parquet or .jsonl name"
        )
    engine, version = load_model(model, threads=options.threads)
    try:
        scorer = Scorer(
            engine,
            version,
            options.columns or default_columns(version),
            options.keep,
            on_error=options.on_error,
            nulls_as_nan=options.nulls_as_nan,
        )
        target = dict(zip(map(str, files), outputs, strict=True))
        bar = Progress(progress, count_rows(files, in_fmt))
        chunks = (
            chunk
            for f in files
            for chunk in read_chunks(f, in_fmt, scorer.columns, scorer.keep, options.batch_rows)
        )
        job = _Job(scorer, outputs, out_fmt, rejects)
        try:
            for file, scored in _in_order(chunks, model, options, scorer):
                bar.advance(job.take(target[file], scored))
            job.finish(_empty_chunk(scorer))
        except BaseException:
            job.discard()
            raise
        finally:
            bar.close()
    finally:
        engine.close()
    written = sum(w.rows for w in job.writers.values())
    return ScoreSummary(
        rows=written,
        rejected=job.rejected,
        files=len(files),
        outputs=tuple(job.writers),
        rejects=rejects,
        seconds=time.monotonic() - start,
    )
