"""Files in and out of ``ligeiro score``: CSV, Parquet and JSON Lines, read in bounded chunks.

Every reader streams: Parquet by ``ParquetFile.iter_batches`` (one row group in memory at
a time), CSV by ``pyarrow.csv.open_csv`` (blocks of a few MiB), JSON Lines line by line
(pyarrow's JSON reader refuses a number in a column it inferred as text, and a bad row
must be reported, not end the read). Chunks carry their file and the 1-based number of
each row, so a bad value can be named precisely.

Writers write to a hidden temporary file in the destination's folder and rename it into
place only when the whole run succeeded (``commit``); ``discard`` removes it.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal, final

import msgspec
import numpy as np

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    import pyarrow as pa

__all__ = [
    "FORMATS",
    "Chunk",
    "Format",
    "TableWriter",
    "check_columns",
    "format_of",
    "input_files",
    "read_chunks",
    "total_rows",
]

logger = logging.getLogger(__name__)

Format = Literal["csv", "parquet", "jsonl"]
FORMATS: dict[str, Format] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_CSV_BLOCK_BYTES = 4 << 20


@dataclass(slots=True)
class Chunk:
    """Consecutive rows of one input file.

    Attributes:
        file: the file they come from, as the user named it.
        table: the columns read (features as read, numbers or text; kept columns).
        first_row: the 1-based number of the first row in its file (data rows; a CSV
            header is not counted).
        row_numbers: each row's number when they are not consecutive (JSON Lines with
            blank lines), else None.
        errors: rows the reader already found bad: (index in the chunk, column, message).
    """

    file: str
    table: pa.Table
    first_row: int
    row_numbers: np.ndarray | None = None
    errors: list[tuple[int, str, str]] = field(default_factory=list)

    def row(self, index: int) -> int:
        """The 1-based row number, in its file, of the chunk's row ``index``."""
        if self.row_numbers is not None:
            return int(self.row_numbers[index])
        return self.first_row + index


def format_of(path: Path, given: str | None, what: str) -> Format:
    """The format named by ``given``, else by ``path``'s extension.

    Raises:
        InvalidInputError: no format given and the extension is not a known one.
    """
    if given is not None:
        return given  # type: ignore[return-value]  # click.Choice checked it
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        known = ", ".join(FORMATS)
        raise InvalidInputError(
            f"{path}: cannot tell the {what} format from the extension {path.suffix!r} "
            f"(known: {known}); pass --{'format' if what == 'input' else 'output-format'}"
        )
    return found


def input_files(path: Path, given: str | None) -> tuple[list[Path], Format]:
    """The files to read and their format: ``path`` itself, or the files in a directory.

    A directory is read in name order; hidden files, and files of another format than
    the first one found (or than ``given``), are skipped.

    Raises:
        InvalidInputError: the path does not exist, or the directory holds no input file.
    """
    if path.is_file():
        return [path], format_of(path, given, "input")
    if not path.is_dir():
        raise InvalidInputError(f"{path}: no such file or directory")
    files = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith((".", "_"))]
    if given is None:
        known = [p for p in files if p.suffix.lower() in FORMATS]
        if not known:
            raise InvalidInputError(
                f"{path}: no .csv, .parquet or .jsonl files in this directory (or pass --format)"
            )
        given = FORMATS[known[0].suffix.lower()]
        files = [p for p in known if FORMATS[p.suffix.lower()] == given]
    if not files:
        raise InvalidInputError(f"{path}: no files to read in this directory")
    return files, given  # type: ignore[return-value]


def total_rows(files: Sequence[Path], fmt: Format) -> int | None:
    """The number of rows, when the files say it without being read (Parquet's footer)."""
    if fmt != "parquet":
        return None
    import pyarrow.parquet as pq

    return sum(int(pq.ParquetFile(f).metadata.num_rows) for f in files)


def read_chunks(
    path: Path,
    fmt: Format,
    features: Sequence[str],
    keep: Sequence[str],
    batch_rows: int,
) -> Iterator[Chunk]:
    """Read the ``features`` and ``keep`` columns of ``path`` in chunks of ``batch_rows``.

    Raises:
        InvalidInputError: the file cannot be read, or lacks one of the columns.
    """
    columns = list(dict.fromkeys([*features, *keep]))
    if fmt == "parquet":
        return _parquet(path, columns, batch_rows)
    if fmt == "csv":
        return _rechunk(path, _csv(path, features, columns), batch_rows)
    return _jsonl(path, features, columns, batch_rows)


def check_columns(path: Path, columns: Sequence[str], have: Sequence[str]) -> None:
    """Refuse a file (or DataFrame) that lacks any of ``columns`` (InvalidInputError)."""
    missing = [c for c in columns if c not in have]
    if missing:
        raise InvalidInputError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(map(repr, missing))}; it has {', '.join(map(repr, have)) or 'none'}"
        )


def _parquet(path: Path, columns: list[str], batch_rows: int) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InvalidInputError(f"{path}: not a readable Parquet file: {exc}") from None
    check_columns(path, columns, handle.schema_arrow.names)
    row = 1
    with handle:
        for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
            yield Chunk(str(path), pa.Table.from_batches([batch]), row)
            row += batch.num_rows


def _csv(path: Path, features: Sequence[str], columns: list[str]) -> Iterator[pa.Table]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    # Every column is read as text: a number that does not parse becomes a bad row with
    # its number (pyarrow's own conversion stops the whole read without one), and a
    # pass-through column never fails on a type its first block did not predict.
    # Empty fields are nulls, so they read as "missing", not as unparseable "".
    convert = pcsv.ConvertOptions(
        column_types=dict.fromkeys(columns, pa.string()),
        include_columns=columns,
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
            convert_options=convert,
        )
    except pa.ArrowKeyError:  # a column in include_columns is not in the header
        with path.open(newline="") as stream:
            check_columns(path, columns, next(csv.reader(stream), []))
        raise
    except pa.ArrowInvalid as exc:
        raise InvalidInputError(f"{path}: {exc}") from None
    del features  # all columns are text; the scorer converts the features
    with contextlib.closing(reader):
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                # A row with the wrong number of fields: pyarrow's streaming reader does
                # not know its number, so the file fails as a whole (it shows the row).
                raise InvalidInputError(f"{path}: {exc}") from None
            yield pa.Table.from_batches([batch])


def _rechunk(path: Path, tables: Iterator[pa.Table], batch_rows: int) -> Iterator[Chunk]:
    """Regroup a reader's tables (sized by bytes) into chunks of ``batch_rows`` rows."""
    import pyarrow as pa

    pending: list[pa.Table] = []
    count = 0
    row = 1
    for table in tables:
        pending.append(table)
        count += table.num_rows
        while count >= batch_rows:
            joined = pa.concat_tables(pending)
            yield Chunk(str(path), joined.slice(0, batch_rows), row)
            row += batch_rows
            rest = joined.slice(batch_rows)
            pending, count = [rest], rest.num_rows
    if count:
        yield Chunk(str(path), pa.concat_tables(pending), row)


def _jsonl(
    path: Path, features: Sequence[str], columns: list[str], batch_rows: int
) -> Iterator[Chunk]:
    decode = msgspec.json.Decoder().decode
    numbered = 0
    with path.open("rb") as stream:
        while True:
            values: dict[str, list[Any]] = {c: [] for c in columns}
            numbers: list[int] = []
            errors: list[tuple[int, str, str]] = []
            for line in stream:
                numbered += 1
                if not line.strip():
                    continue
                try:
                    record = decode(line)
                except msgspec.DecodeError as exc:
                    record, problem = None, f"not valid JSON: {exc}"
                else:
                    problem = "" if isinstance(record, dict) else "expected a JSON object"
                if problem:
                    errors.append((len(numbers), "", problem))
                    record = {}
                numbers.append(numbered)
                for c in columns:
                    values[c].append(record.get(c))
                if len(numbers) == batch_rows:
                    break
            if not numbers:
                return
            table = _json_table(values, features)
            rows = np.asarray(numbers, dtype=np.int64)
            is_consecutive = rows[-1] - rows[0] == len(rows) - 1
            yield Chunk(str(path), table, int(rows[0]), None if is_consecutive else rows, errors)


def _json_table(values: dict[str, list[Any]], features: Sequence[str]) -> pa.Table:
    import pyarrow as pa

    arrays = {}
    for name, column in values.items():
        try:
            arrays[name] = pa.array(column, type=pa.float64() if name in features else None)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            # Mixed types: as text, so the scorer reports the values that are not numbers
            # (features) or passes them through unchanged (other columns).
            arrays[name] = pa.array(
                [
                    v if v is None or isinstance(v, str) else msgspec.json.encode(v).decode()
                    for v in column
                ],
                type=pa.string(),
            )
    return pa.table(arrays)


def _is_text(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_dictionary(kind)
        or pa.types.is_binary(kind)
    )


@final
class TableWriter:
    """Writes tables of one schema to ``path`` in ``fmt``, through a temporary file.

    The first table fixes the schema; a later one is cast to it (a column whose type
    changed in a way that cannot be cast is an error naming the column).
    """

    def __init__(self, path: Path, fmt: Format) -> None:
        self.path = path
        self.fmt = fmt
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        self._schema: pa.Schema | None = None
        self._writer: Any = None
        self._stream: IO[bytes] | None = None
        self._encode = msgspec.json.Encoder().encode
        self._dictionaries: dict[int, pa.Array | None] = {}

    def write(self, table: pa.Table) -> None:
        import pyarrow as pa

        if self._schema is None:
            self._open(table.schema)
        elif table.schema != self._schema:
            try:
                table = table.cast(self._schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                raise InvalidInputError(
                    f"{self.path}: a column changed type between chunks or files "
                    f"({self._schema} vs {table.schema}): {exc}"
                ) from None
        if self.fmt == "parquet":
            table = self._same_dictionaries(table)
        if self.fmt == "jsonl":
            assert self._stream is not None
            encode = self._encode
            rows = table.to_pylist()
            if rows:
                self._stream.write(b"\n".join([encode(r) for r in rows]) + b"\n")
        else:
            self._writer.write_table(table)
        self.rows += table.num_rows

    def _same_dictionaries(self, table: pa.Table) -> pa.Table:
        """Dictionary columns sharing the first table's dictionary object.

        Parquet's writer writes a dictionary column's indices as they are only when its
        dictionary is the very object it saw before; an equal copy (a table that came
        back from a worker process) makes it decode and re-encode every value.
        """
        import pyarrow as pa

        for i, kind in enumerate(table.schema.types):
            if not pa.types.is_dictionary(kind):
                continue
            chunks = table.column(i).chunks
            first = self._dictionaries.setdefault(i, chunks[0].dictionary if chunks else None)
            if first is None:
                continue
            same = [
                c
                if c.dictionary is first or not c.dictionary.equals(first)
                else pa.DictionaryArray.from_arrays(c.indices, first)
                for c in chunks
            ]
            table = table.set_column(i, table.field(i), pa.chunked_array(same, kind))
        return table

    def _open(self, schema: pa.Schema) -> None:
        self._schema = schema
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            # Dictionary encoding only where values repeat (text: label names, ids of
            # customers). On float and integer columns pyarrow tries a dictionary,
            # finds it too large and falls back: writing took 2.5x as long on iris.
            text = [f.name for f in schema if _is_text(f.type)]
            self._writer = pq.ParquetWriter(self._temp, schema, use_dictionary=text)
        elif self.fmt == "csv":
            import pyarrow.csv as pcsv

            self._writer = pcsv.CSVWriter(self._temp, schema)
        else:
            self._stream = self._temp.open("wb")

    def ensure_open(self, schema: pa.Schema) -> None:
        """Open with ``schema`` if nothing was written (an empty input still gets a file)."""
        if self._schema is None:
            self._open(schema)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def commit(self) -> None:
        """Finish the file and move it into place."""
        self._close()
        os.replace(self._temp, self.path)

    def discard(self) -> None:
        """Remove the temporary file; the destination is left as it was."""
        with contextlib.suppress(Exception):
            self._close()
        with contextlib.suppress(FileNotFoundError):
            self._temp.unlink()
