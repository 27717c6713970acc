"""``ligeiro convert``, ``optimize`` and ``package``: the commands that build models."""

from __future__ import annotations

from pathlib import Path

import click

from ._group import NeedsExtra, cli, plain_logging

__all__ = ["convert", "optimize", "package"]


@cli.command(cls=NeedsExtra, extra="convert")
@click.argument("source")
@click.option(
    "--data",
    "sample",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Sample input rows (.csv, .parquet or .npy): the check runs on them, and "
    "column names become feature names. With --task: sample texts, one per line "
    "(default: a few built-in ones).",
)
@click.option(
    "--task",
    type=click.Choice(["feature-extraction", "text-classification"]),
    help="SOURCE is a Hugging Face model folder: write a text pipeline (tokenizer, "
    "exported model) at --out, its steps beside it as NAME-tokenizer and NAME-encoder "
    "(or NAME-classifier).",
)
@click.option(
    "--out",
    "folder",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The model's folder in a repository, REPO/NAME.",
)
@click.option("--version", "model_version", type=int, help="Version to write (default: next).")
@click.option(
    "--tolerance",
    type=float,
    default=1e-5,
    show_default=True,
    help="Largest difference allowed between the original's and the ONNX's outputs.",
)
@click.option("--sample-rows", type=int, help="Check on this many rows drawn from --data.")
@click.option(
    "--drop-column", "drop", multiple=True, help="A column of --data that is not an input."
)
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow loading a pickle/joblib file: unpickling runs code from the file.",
)
@click.option(
    "--input-dtype",
    type=click.Choice(["float32", "float64"]),
    default="float32",
    show_default=True,
    help="The input type served (clients send FP32 or FP64); float64 keeps tree "
    "ensembles' thresholds in float64, like the original.",
)
@click.option(
    "--strict-input-precision",
    is_flag=True,
    help="Also fail when rounding the sample to --input-dtype alone changes the "
    "original's answers (by default that is reported, not checked).",
)
def convert(
    source: str,
    sample: Path | None,
    task: str | None,
    folder: Path,
    model_version: int | None,
    tolerance: float,
    sample_rows: int | None,
    drop: tuple[str, ...],
    trust_pickle: bool,
    input_dtype: str,
    strict_input_precision: bool,
) -> None:
    """Convert SOURCE to ONNX in a model folder, after checking it against the original.

    SOURCE is a saved model (.skops; .joblib/.pkl only with --trust-pickle; XGBoost
    .json/.ubj; LightGBM .txt; CatBoost .cbm) or a PyTorch module as
    package.module:attribute. The
    original and the ONNX model run on the sample cast to --input-dtype (what a client
    sends); if they disagree beyond --tolerance, nothing is written and the command
    fails with the report. What the cast alone changes is reported apart.

    With --task, SOURCE is a local Hugging Face or sentence-transformers folder; ONNX
    Runtime and torch must agree on the sample texts (--tolerance; embeddings' cosine
    at least 0.9999, labels equal). Needs torch and transformers (ligeiro[text-build]).
    """
    plain_logging()
    if task is not None:
        tabular = {
            "--version": model_version is not None,
            "--sample-rows": sample_rows is not None,
            "--drop-column": bool(drop),
            "--trust-pickle": trust_pickle,
            "--input-dtype": input_dtype != "float32",
            "--strict-input-precision": strict_input_precision,
        }
        given = [option for option, used in tabular.items() if used]
        if given:
            raise click.UsageError(
                f"{', '.join(given)}: not for --task (a text pipeline is written as version 1 "
                "of its models, from texts)"
            )
        _convert_text(source, sample, task, folder, tolerance)
        return
    if sample is None:
        raise click.UsageError("--data is required (sample input rows for the check)")
    if Path(source).is_dir():
        raise click.UsageError(
            f"{source} is a folder: for a Hugging Face model folder give "
            "--task feature-extraction or --task text-classification"
        )
    from ..convert.convert import convert_model

    result = convert_model(
        source,
        sample,
        folder,
        version=model_version,
        tolerance=tolerance,
        trust_pickle=trust_pickle,
        sample_rows=sample_rows,
        drop_columns=drop,
        input_dtype=input_dtype,
        strict_input_precision=strict_input_precision,
    )
    click.echo(result.fidelity.table())
    click.echo(f"wrote {result.model_path} (report: {result.report_path})")


def _convert_text(
    source: str, sample: Path | None, task: str, folder: Path, tolerance: float
) -> None:
    from ..convert.text import convert_text_folder

    texts = None
    if sample is not None:
        try:
            texts = [line for line in sample.read_text(encoding="utf-8").splitlines() if line]
        except (OSError, UnicodeDecodeError) as exc:
            raise click.UsageError(f"--data {sample}: cannot read texts: {exc}") from None
    result = convert_text_folder(source, folder, task=task, texts=texts, tolerance=tolerance)
    click.echo(result.table())
    click.echo(
        f"wrote {result.pipeline} (steps {result.tokenizer.name}, {result.model.name}; "
        f"report: {result.report_path})"
    )


@cli.command(cls=NeedsExtra, extra="convert")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--mode",
    type=click.Choice(["graph", "int8", "fp16"]),
    required=True,
    help="graph: ONNX Runtime's graph optimizations saved; int8: dynamic quantization "
    "of MatMul/Gemm weights; fp16: float16 inside, float32 at the edges.",
)
@click.option("--version", "model_version", help="Version to optimize (default: the highest).")
@click.option(
    "--data",
    "sample",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Sample inputs (.csv, .parquet or .npy); default: 64 generated rows.",
)
@click.option(
    "--tolerance",
    type=float,
    required=True,
    help="Largest difference allowed on outputs other than labels (which must agree).",
)
@click.option(
    "--min-agreement",
    type=float,
    default=1.0,
    show_default=True,
    help="Share of rows whose labels must not change.",
)
@click.option("--threads", type=int, default=1, show_default=True, help="ORT threads to time on.")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed runs per batch size.")
def optimize(
    folder: Path,
    mode: str,
    model_version: str | None,
    sample: Path | None,
    tolerance: float,
    min_agreement: float,
    threads: int,
    runs: int,
) -> None:
    """Optimize the model in FOLDER and write it as its next version, if it stays close.

    Times the model before and after (batch 1 and the whole sample) and compares their
    outputs; a result outside --tolerance writes nothing and fails with the report.
    """
    plain_logging()
    from ..convert.optimize import OptimizationError, optimize_model

    try:
        result = optimize_model(
            folder,
            mode=mode,  # type: ignore[arg-type]  # click.Choice checked it
            tolerance=tolerance,
            version=model_version,
            sample=sample,
            threads=threads,
            runs=runs,
            min_agreement=min_agreement,
            progress=lambda line: click.echo(line, err=True),
        )
    except OptimizationError as exc:
        if exc.result is not None:  # the candidate ran: show why it was refused
            click.echo(exc.result.table())
        raise
    click.echo(result.table())


@cli.command(cls=NeedsExtra, extra="package")
@click.argument("folder", metavar="MODEL_DIR", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path, file_okay=False), default=Path("dist"),
    show_default=True, help="The folder the file is written to.",
)
@click.option("--name", help="Distribution name (default <model>-model; import <model>_model).")
@click.option("--version", "version", help="Package version, PEP 440 (default <version>.0.0).")
@click.option("--model-version", help="The model version to package (default: the highest).")
@click.option(
    "--format", "fmt", type=click.Choice(["wheel", "pyz"]), default="wheel", show_default=True,
    help="wheel: a dependency of an application; pyz: one file that runs with a bare Python.",
)
@click.option("--force", is_flag=True, help="Replace a file of the same name in --out.")
def package(
    folder: Path, out: Path, name: str | None, version: str | None,
    model_version: str | None, fmt: str, force: bool,
) -> None:  # fmt: skip
    """Package one model folder as a wheel or an executable zipapp.

    The wheel installs a module (iris-model: import iris_model) with predict,
    predict_proba, infer and metadata, depending only on numpy, onnxruntime and msgspec.
    The pyz adds ligeiro and its dependencies: ./iris.pyz predict --data '{...}' or serve.
    """
    plain_logging()
    from ..errors import ConfigError, ModelNotFoundError
    from ..package.wheel import build_wheel, check_name

    try:
        if fmt == "wheel":
            built = build_wheel(
                folder, out, name=name, version=version, model_version=model_version, force=force
            )
            what = f"{built.name} {built.version}: import {built.import_name}"
            click.echo(f"wrote {built.path} ({what})")
            return
        from ..package.pyz import build_pyz
        from ..repository.layout import locate

        stem = check_name(name, version or "0")[0] if name else locate(folder)[0].name
        built, path = build_pyz(
            folder, out / f"{stem}.pyz", name=name, version=version,
            model_version=model_version, force=force,
        )  # fmt: skip
    except ModelNotFoundError as exc:  # a usage error here: the folder given does not load
        raise ConfigError(str(exc)) from None
    click.echo(f"wrote {path} ({built.name} {built.version}; run: {path} predict --data JSON)")
