"""The ``ligeiro`` command: ``serve``, ``infer``, ``convert``, ``optimize``, ``score``,
``package``, ``bench`` and ``version``.

Errors print one line and exit with the code their class defines.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import LigeiroError

__all__ = ["main"]

logger = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """ligeiro: serve ONNX models over the KServe V2 protocol, fast."""


class _NeedsExtra(click.Command):
    """A command that needs an optional extra: without it, one sentence and exit 2.

    Checked before the arguments, so that a user without the extra learns that first
    (``--help`` still works).
    """

    def __init__(self, *args: Any, extra: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra = extra

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not any(arg in ctx.help_option_names for arg in args):
            from .extras import require

            require(self.extra, f"ligeiro {self.name}")
        return super().parse_args(ctx, args)


@cli.command()
@click.argument("repository", type=click.Path(path_type=Path), required=False)
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind; 0 picks a free one (default 8000).")
@click.option("--grpc-port", type=int, help="gRPC port; 0 picks a free one (default 8001).")
@click.option("--grpc/--no-grpc", "grpc_enabled", default=None, help="Serve V2 gRPC (default on).")
@click.option(
    "--grpc-transport",
    type=click.Choice(["h2", "grpcio"]),
    help="What carries gRPC: ligeiro's HTTP/2 framing or grpcio's grpc.aio (default h2).",
)
@click.option(
    "--workers", type=int, help="Worker processes sharing the port (default 0: one per core)."
)
@click.option(
    "--threads", type=int, help="ONNX Runtime threads per worker (default cores / workers)."
)
@click.option(
    "--providers",
    metavar="NAME,...",
    help="Execution providers of the models whose config.toml names none, in priority "
    "order: tensorrt, cuda, cpu (default cpu). A model runs on the first one available; "
    "without cpu in the list it fails to load rather than fall back to the CPU.",
)
@click.option(
    "--max-request-bytes", type=int, help="Largest request body accepted (default 64 MiB)."
)
@click.option("--graceful-timeout", type=float, help="Seconds to drain on SIGTERM (default 30).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option(
    "--access-log",
    metavar="TARGET",
    help="One JSON line per inference request: - for standard output, or a file.",
)
@click.option(
    "--otel-endpoint",
    metavar="URL",
    help="Trace requests to this OTLP/HTTP collector (needs ligeiro[otel]); "
    "the OTEL_* variables also turn tracing on.",
)
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path), help="ligeiro.toml to read."
)
@click.option(
    "--batch",
    "batch",
    multiple=True,
    metavar="MODEL:KEY=VALUE,...",
    help="Batching for MODEL, replacing its config.toml [batching]; e.g. "
    "mlp:max_batch_size=64,max_queue_delay_us=500 (max_batch_size=0 turns it off). "
    "Repeat for several models.",
)
@click.option(
    "--model-control",
    type=click.Choice(["none", "poll", "explicit"]),
    help="How models change while serving: never (default), when their folders change "
    "(poll), or through the repository API (explicit; needs --admin-token).",
)
@click.option(
    "--admin-token",
    metavar="TOKEN",
    help="Bearer token of the repository API (better: the LIGEIRO_ADMIN_TOKEN variable, "
    "which no process listing shows).",
)
@click.option(
    "--inference-token",
    "inference_tokens",
    multiple=True,
    metavar="TOKEN",
    help="A bearer token every route but health needs (repeat for several; better: "
    "LIGEIRO_INFERENCE_TOKENS=a,b or --inference-token-file).",
)
@click.option(
    "--inference-token-file",
    metavar="FILE",
    help="Inference tokens, one a line; read again on SIGHUP (rotation without a restart).",
)
@click.option(
    "--metrics-public/--no-metrics-public",
    default=None,
    help="Serve /metrics without a token (default: it needs one when tokens are set).",
)
@click.option(
    "--rate-limit",
    type=float,
    metavar="PER_S",
    help="Requests a second per client address, both transports (default 0: no limit).",
)
@click.option("--tls-cert", metavar="FILE", help="Serve HTTPS and gRPC over TLS: the certificate.")
@click.option("--tls-key", metavar="FILE", help="The certificate's private key.")
@click.option(
    "--tls-client-ca",
    metavar="FILE",
    help="Require client certificates signed by this CA (mTLS).",
)
@click.option(
    "--model-name",
    metavar="NAME",
    help="Serve REPOSITORY as one model folder under NAME (its model.onnx, or version "
    "folders, and maybe config.toml; KServe's /mnt/models), not as a repository.",
)
@click.option(
    "--ui/--no-ui",
    "ui",
    default=None,
    help="Serve the dashboard at / and the API docs at /docs (default on).",
)
@click.option("--print-config", is_flag=True, help="Print the effective settings and exit.")
def serve(
    repository: Path | None,
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    grpc_enabled: bool | None,
    grpc_transport: str | None,
    workers: int | None,
    threads: int | None,
    providers: str | None,
    max_request_bytes: int | None,
    graceful_timeout: float | None,
    log_level: str | None,
    access_log: str | None,
    otel_endpoint: str | None,
    config_file: Path | None,
    batch: tuple[str, ...],
    model_control: str | None,
    admin_token: str | None,
    inference_tokens: tuple[str, ...],
    inference_token_file: str | None,
    metrics_public: bool | None,
    rate_limit: float | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    model_name: str | None,
    ui: bool | None,
    print_config: bool,
) -> None:
    """Serve the models in REPOSITORY (<model>/<version>/model.onnx) over V2 REST and gRPC.

    With --model-name, REPOSITORY is one model's folder instead.
    """
    import msgspec

    from .settings import load_settings

    cli_layer: dict[str, Any] = {
        "repository": str(repository) if repository else None,
        "model_name": model_name,
        "workers": workers,
        "graceful_timeout_s": graceful_timeout,
        "log_level": log_level,
        "access_log": access_log,
        "otel_endpoint": otel_endpoint,
        "model_control": model_control,
        "admin_token": admin_token,
        "inference_tokens": list(inference_tokens) or None,
        "inference_token_file": inference_token_file,
        "metrics_public": metrics_public,
        "rate_limit_per_s": rate_limit,
        "tls": {"cert": tls_cert, "key": tls_key, "client_ca": tls_client_ca},
        "ui": ui,
        "http": {"host": host, "port": port, "max_request_bytes": max_request_bytes},
        "grpc": {"port": grpc_port, "enabled": grpc_enabled, "transport": grpc_transport},
        "runtime": {
            "threads": threads,
            "providers": None if providers is None else providers.split(","),
        },
        "batching": dict(_batch_option(text) for text in batch) or None,
    }
    settings = load_settings(cli_layer, config_file=config_file)
    if print_config:
        from .server.access import exposure_warning

        # Secrets: say they are set, not what they are.
        shown = msgspec.structs.replace(
            settings,
            admin_token=None if settings.admin_token is None else "<set>",
            inference_tokens=["<set>"] * len(settings.inference_tokens),
        )
        click.echo(msgspec.json.format(msgspec.json.encode(shown)).decode())
        warning = exposure_warning(settings)
        if warning is not None:
            click.echo(f"warning: {warning}", err=True)
        return
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from .server.app import serve as run_server

    try:
        run_server(settings)
    except OSError as exc:  # a bind that failed; the message names the address
        raise click.ClickException(str(exc)) from None


def _batch_option(text: str) -> tuple[str, dict[str, Any]]:
    """``mlp:max_batch_size=64,preferred_batch_sizes=16/32`` as ``("mlp", {...})``."""
    model, sep, pairs = text.partition(":")
    policy: dict[str, Any] = {}
    for pair in pairs.split(",") if pairs else ():
        key, eq, value = pair.partition("=")
        if not eq or not value:
            raise click.BadParameter(
                f"{pair!r} in {text!r}: expected KEY=VALUE", param_hint="--batch"
            )
        policy[key.strip()] = value.split("/") if key.strip() == "preferred_batch_sizes" else value
    if not model or not sep or not policy:
        raise click.BadParameter(
            f"{text!r}: expected MODEL:KEY=VALUE[,KEY=VALUE...]", param_hint="--batch"
        )
    return model, policy


@cli.command()
@click.argument("model")
@click.option("--data", help="The request as JSON text.")
@click.option(
    "--file", "path", type=click.Path(path_type=Path), help="Read the request from a file."
)
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The server.")
@click.option("--version", "model_version", help="The model version (default: the server's).")
def infer(
    model: str, data: str | None, path: Path | None, url: str, model_version: str | None
) -> None:
    """Send one request to MODEL on a running server and print the answer.

    The request is --data, --file, or standard input. A V2 request (with "inputs" as a
    list of tensors) goes to /v2/models/MODEL/infer; anything else, such as named
    features ({"sepal_length": 5.1, ...}) or {"instances": [...]}, to
    /v1/models/MODEL:predict.
    """
    from urllib.parse import quote

    from .client import Client

    if data is not None:
        body = data.encode()
    elif path is not None:
        body = path.read_bytes()
    else:
        body = sys.stdin.buffer.read()
    target = quote(model, safe="")
    if model_version is not None:
        target += f"/versions/{quote(model_version, safe='')}"
    is_v2 = b'"inputs"' in body and b'"datatype"' in body
    route = f"/v2/models/{target}/infer" if is_v2 else f"/v1/models/{target}:predict"
    if model_version is not None and not is_v2:
        raise click.UsageError(
            "--version needs a V2 request (the :predict route serves the default)"
        )
    try:
        with Client(url) as client:
            answer = client.request("POST", route, body)
    except OSError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc.strerror or exc}") from None
    click.echo(answer.decode())


@cli.command(cls=_NeedsExtra, extra="convert")
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
    _logging()
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
    from .convert.convert import convert_model

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
    from .convert.text import convert_text_folder

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


@cli.command(cls=_NeedsExtra, extra="convert")
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
    _logging()
    from .convert.optimize import OptimizationError, optimize_model

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


@cli.command(cls=_NeedsExtra, extra="score")
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

    MODEL is a model folder (REPO/NAME, its highest version) or REPO/NAME/VERSION.
    INPUT is a CSV, Parquet or JSON Lines file, or a directory of them. Classifiers
    write label, label_name and probability_<class>; other models one column per
    output element. Bad rows are reported with file, row and column.

    With --engine spark the same scoring runs as a Spark job (local[*], or --master),
    and OUTPUT is a directory of Spark's part files.
    """
    if engine == "spark":
        from .extras import require

        require("spark", "ligeiro score --engine spark")
    from .score import ScoreOptions, score_files

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
        from . import spark

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


@cli.command()
@click.argument("url")
@click.argument("model")
@click.option("--version", "model_version", help="The model version (default: the server's).")
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A V2 JSON request body to send (default: one built from the model's metadata).",
)
@click.option(
    "--template",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A body with {{uniform:LO:HI}} / {{int:LO:HI}} placeholders, drawn per request.",
)
@click.option(
    "--bodies", type=int, default=1000, show_default=True, help="Bodies --template renders."
)
@click.option(
    "--route",
    help="POST to this path (e.g. /predict) instead of the V2 infer route; needs --data "
    "or --template.",
)
@click.option("--batch-size", type=int, default=1, show_default=True, help="Rows per request.")
@click.option("--concurrency", help="Closed loop: 16, 1,4,16 or 1:64:x2 (the default mode, 1).")
@click.option(
    "--rate", type=float, multiple=True, help="Open loop, requests/s; repeat for several levels."
)
@click.option(
    "--stages",
    help="Ramping open loop: DURATION:TARGET,... e.g. 30s:100/m,60s:4000/m (TARGET per s, "
    "or per minute with /m).",
)
@click.option(
    "--window", type=float, default=0.0, help="With --stages: also report every N seconds (JSON)."
)
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds per level.")
@click.option("--warmup", type=float, default=0.0, show_default=True, help="Seconds, unmeasured.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per answer.")
@click.option(
    "--connections", type=int, default=512, show_default=True, help="Open-loop connection cap."
)
@click.option("--processes", type=int, default=1, show_default=True, help="Generator processes.")
@click.option(
    "--metrics-url",
    help="Server metrics for CPU/RSS (default: URL/metrics over HTTP; none over gRPC).",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write JSON here.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write HTML here.")
def bench(
    url: str,
    model: str,
    model_version: str | None,
    data: Path | None,
    template: Path | None,
    bodies: int,
    route: str | None,
    batch_size: int,
    concurrency: str | None,
    rate: tuple[float, ...],
    stages: str | None,
    window: float,
    duration: float,
    warmup: float,
    timeout: float,
    connections: int,
    processes: int,
    metrics_url: str | None,
    json_path: Path | None,
    html_path: Path | None,
) -> None:
    """Load MODEL on the V2 server at URL and report latency and throughput per level.

    URL is http://HOST:PORT (V2 REST over HTTP/1.1) or grpc://HOST:PORT (V2 gRPC,
    ModelInfer; one channel per connection); errors count by HTTP status or gRPC code.
    With --route, any HTTP server: the bodies are POSTed to that path and MODEL only
    names the run.
    Exits 1 when any request failed (non-2xx or non-OK, timeout, connection error or
    not sent).
    """
    from .bench._command import BenchCommand

    command = BenchCommand(
        url, model, model_version, data, batch_size, concurrency, rate, stages, duration,
        warmup, timeout, connections, processes, metrics_url, json_path, html_path,
        route=route, template=template, bodies=bodies, window_s=window,
    )  # fmt: skip
    code = command.run()
    if code:
        sys.exit(code)


@cli.command(cls=_NeedsExtra, extra="package")
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
    _logging()
    from .errors import ConfigError, ModelNotFoundError
    from .package.wheel import build_wheel, check_name

    try:
        if fmt == "wheel":
            built = build_wheel(
                folder, out, name=name, version=version, model_version=model_version, force=force
            )
            what = f"{built.name} {built.version}: import {built.import_name}"
            click.echo(f"wrote {built.path} ({what})")
            return
        from .package.pyz import build_pyz
        from .repository.layout import locate

        stem = check_name(name, version or "0")[0] if name else locate(folder)[0].name
        built, path = build_pyz(
            folder, out / f"{stem}.pyz", name=name, version=version,
            model_version=model_version, force=force,
        )  # fmt: skip
    except ModelNotFoundError as exc:  # a usage error here: the folder given does not load
        raise ConfigError(str(exc)) from None
    click.echo(f"wrote {path} ({built.name} {built.version}; run: {path} predict --data JSON)")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


@cli.command()
def version() -> None:
    """Print ligeiro's version."""
    click.echo(__version__)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a LigeiroError ends it with one line and the error's exit code."""
    try:
        cli.main(args=argv, prog_name="ligeiro", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except LigeiroError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)

    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
