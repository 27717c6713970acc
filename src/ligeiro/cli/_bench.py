"""``ligeiro infer`` and ``bench``: a running server, asked once or loaded."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._group import cli

__all__ = ["bench", "infer"]


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

    from ..client import Client

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
    from ..bench._command import BenchCommand

    command = BenchCommand(
        url, model, model_version, data, batch_size, concurrency, rate, stages, duration,
        warmup, timeout, connections, processes, metrics_url, json_path, html_path,
        route=route, template=template, bodies=bodies, window_s=window,
    )  # fmt: skip
    code = command.run()
    if code:
        sys.exit(code)
