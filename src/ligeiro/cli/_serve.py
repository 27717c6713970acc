"""``ligeiro serve``: its options, as the CLI layer of the settings."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from ._group import cli

__all__ = ["serve"]


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

    from ..settings import load_settings

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
        from ..server.access import exposure_warning

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
    from ..server.app import serve as run_server

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
