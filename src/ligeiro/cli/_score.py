"""``ligeiro score``: files scored in batches, here or on Spark."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ._group import NeedsExtra, cli

__all__ = ["score"]


@cli.command(cls=NeedsExtra, extra="score")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("source", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="A file for all rows, or a directory for one file per input file.",
)
@click.option(
    "--format",
    "input_format",
    type=click.Choice(["csv", "parquet", "jsonl"]),
    help="Input format (default: from the extension).",
)
@click.option(
    "--output-format",
    type=click.Choice(["csv", "parquet", "jsonl"]),
    help="Output format (default: from the extension; a directory takes the input's).",
)
@click.option("--columns", help="Input columns feeding the model, in order (default: features).")
@click.option("--keep", help="Columns copied to the output before the predictions: id,customer.")
@click.option(
    "--batch-rows", type=click.IntRange(min=1), default=65536, show_default=True,
    help="Rows per model run.",
)  # fmt: skip
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True,
    help="Processes that score, each with the model loaded once.",
)  # fmt: skip
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True,
    help="ONNX Runtime threads per worker.",
)  # fmt: skip
@click.option(
    "--on-error",
    type=click.Choice(["fail", "reject"]),
    default="fail",
    show_default=True,
    help="fail: stop at the first bad row, write nothing; reject: bad rows go to --rejects.",
)
@click.option(
    "--rejects",
    type=click.Path(path_type=Path),
    help="With --on-error reject: the file (.csv, .parquet, .jsonl) for bad rows.",
)
@click.option(
    "--nulls",
    type=click.Choice(["error", "nan"]),
    default="error",
    show_default=True,
    help="A missing value: a bad row, or NaN for the model (for models with an imputer).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show rows, rows/s and ETA on stderr (default: when stderr is a terminal); "
    "with --engine spark, Spark's progress bar.",
)
@click.option(
    "--engine",
    type=click.Choice(["builtin", "spark"]),
    default="builtin",
    show_default=True,
    help="builtin: this machine's processes; spark: a Spark job (needs ligeiro[spark]), "
    "writing OUTPUT as a directory of part files.",
)
@click.option(
    "--master",
    metavar="URL",
    help="With --engine spark: the Spark master (default local[*]).",
)
@click.option(
    "--conf",
    "spark_conf",
    metavar="KEY=VALUE",
    multiple=True,
    help="With --engine spark: a Spark setting, as spark-submit takes it; repeatable.",
)
def score(
    model: Path,
    source: Path,
    output: Path,
    input_format: str | None,
    output_format: str | None,
    columns: str | None,
    keep: str | None,
    batch_rows: int,
    workers: int,
    threads: int,
    on_error: str,
    rejects: Path | None,
    nulls: str,
    progress: bool | None,
    engine: str,
    master: str | None,
    spark_conf: tuple[str, ...],
) -> None:
    """Score the rows of INPUT with MODEL and write the predictions to OUTPUT.

    MODEL is a model folder (REPO/NAME, its highest version), REPO/NAME/VERSION, or a
    flat folder with model.onnx and config.toml side by side (version 1).
    INPUT is a CSV, Parquet or JSON Lines file, or a directory of them. Classifiers
    write label, label_name and probability_<class>; other models one column per
    output element. Bad rows are reported with file, row and column.

    With --engine spark the same scoring runs as a Spark job (local[*], or --master),
    and OUTPUT is a directory of Spark's part files.
    """
    if engine == "spark":
        from ..extras import require

        require("spark", "ligeiro score --engine spark")
    from ..score import ScoreOptions, score_files

    if engine != "spark" and (master is not None or spark_conf):
        raise click.UsageError("--master and --conf need --engine spark")
    if engine == "spark" and (workers != 1 or on_error != "fail" or rejects is not None):
        raise click.UsageError(
            "--workers, --on-error reject and --rejects do not apply to --engine spark "
            "(the master sets the parallelism: --master local[N]; a bad row fails the job)"
        )
    if on_error == "reject" and rejects is None:
        raise click.UsageError("--on-error reject needs --rejects PATH")
    options = ScoreOptions(
        columns=[c.strip() for c in columns.split(",")] if columns else None,
        keep=[c.strip() for c in keep.split(",")] if keep else (),
        input_format=input_format,  # type: ignore[arg-type]  # click.Choice checked it
        output_format=output_format,  # type: ignore[arg-type]
        batch_rows=batch_rows,
        workers=workers,
        threads=threads,
        on_error=on_error,  # type: ignore[arg-type]
        rejects=rejects,
        nulls_as_nan=nulls == "nan",
    )
    shows_progress = sys.stderr.isatty() if progress is None else progress
    if engine == "spark":
        from .. import spark

        conf = dict(c.partition("=")[::2] for c in spark_conf)
        summary = spark.score_files(
            model,
            source,
            output,
            options,
            master=master or "local[*]",
            conf=conf,
            progress=shows_progress,
        )
        click.echo(summary.line())
        return
    # SIGTERM (a scheduler stopping the job) unwinds as Ctrl-C does: the output's
    # temporary file is removed, and the destination is left as it was.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        summary = score_files(
            model, source, output, options, progress=sys.stderr if shows_progress else None
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo(summary.line())


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
