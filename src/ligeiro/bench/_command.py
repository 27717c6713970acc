"""What ``ligeiro bench`` does once click has parsed its options."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import click

from ._grpcloop import infer_request_bytes
from ._openloop import http_request
from ._payload import payload_from_metadata, render_template
from ._plan import parse_concurrency, parse_stages
from ._report import format_table, to_html, to_json
from ._runner import CLIENT_BUSY, BenchPlan, Level, run_bench

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["BenchCommand"]


@dataclass(frozen=True)
class BenchCommand:
    """``ligeiro bench``'s options, as click parsed them."""

    url: str
    model: str
    model_version: str | None
    data: Path | None
    batch_size: int
    concurrency: str | None
    rate: tuple[float, ...]
    stages: str | None
    duration_s: float
    warmup_s: float
    timeout_s: float
    connections: int
    processes: int
    metrics_url: str | None
    json_path: Path | None
    html_path: Path | None
    # POST here instead of the V2 infer route (MODEL then only names the run).
    route: str | None = None
    template: Path | None = None  # a body with {{uniform:LO:HI}} placeholders
    bodies: int = 1000  # how many bodies --template renders, sent in turn
    window_s: float = 0.0  # with --stages: also report windows of this length

    def run(self) -> int:
        """Run the levels, print the table, write the reports; 1 when any request failed."""
        from ..client import Client

        modes = sum((self.concurrency is not None, bool(self.rate), self.stages is not None))
        if modes > 1:
            raise click.UsageError("give one of --concurrency, --rate and --stages")
        parts = urlsplit(self.url if "//" in self.url else f"http://{self.url}")
        if parts.scheme not in ("http", "grpc") or parts.hostname is None:
            raise click.UsageError(
                f"expected a URL like http://127.0.0.1:8000 or grpc://127.0.0.1:8001, "
                f"got {self.url!r}"
            )
        is_grpc = parts.scheme == "grpc"
        self._check_body_options(is_grpc)
        host, port = parts.hostname, parts.port or (8001 if is_grpc else 80)
        try:
            concurrency = (
                parse_concurrency(self.concurrency or "1") if not modes or self.concurrency else []
            )
            stages = parse_stages(self.stages) if self.stages else []
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        if is_grpc:
            requests = self._grpc_requests(parts.netloc)
        else:
            requests = self._http_requests(f"http://{parts.netloc}")
        plan = BenchPlan(
            host, port, requests[0],
            concurrency=concurrency, rates_per_s=self.rate, stages=stages,
            duration_s=self.duration_s, warmup_s=self.warmup_s, timeout_s=self.timeout_s,
            connections=self.connections, processes=self.processes,
            protocol="grpc" if is_grpc else "http", requests=requests, window_s=self.window_s,
        )  # fmt: skip
        # A gRPC port serves no /metrics: the server's numbers need --metrics-url there.
        metrics_url = self.metrics_url or (None if is_grpc else f"http://{parts.netloc}/metrics")
        with contextlib.ExitStack() as stack:
            metrics = None
            if metrics_url is not None:
                metrics_parts = urlsplit(metrics_url)
                metrics = stack.enter_context(
                    Client(f"http://{metrics_parts.netloc}", timeout_s=5.0)
                )
            started = time.time()  # where the schedule starts, give or take its settling
            levels = run_bench(plan, metrics, urlsplit(metrics_url or "").path or "/metrics",
                               _progress)  # fmt: skip
        shown = [level for level in levels if level.mode != "window"]
        click.echo(format_table(shown))
        if metrics_url is None:
            click.echo(
                "server CPU/RSS: n/a (a gRPC port serves no metrics; give --metrics-url "
                "http://HOST:HTTP_PORT/metrics)",
                err=True,
            )
        self._warn(shown)
        meta = self._meta(len(requests[0]), "grpc" if is_grpc else "http")
        meta["started_unix"] = round(started + self.warmup_s, 3)
        if self.json_path is not None:
            self.json_path.write_text(json.dumps(to_json(levels, meta), indent=2) + "\n")
        if self.html_path is not None:
            self.html_path.write_text(to_html(shown, meta))
        return 1 if any(level.error_count for level in shown) else 0

    def _check_body_options(self, is_grpc: bool) -> None:
        if self.data is not None and self.template is not None:
            raise click.UsageError("give one of --data and --template")
        if self.bodies < 1:
            raise click.BadParameter(f"--bodies must be at least 1, got {self.bodies}")
        if self.window_s < 0 or (self.window_s and self.stages is None):
            raise click.UsageError("--window takes positive seconds, and only with --stages")
        if self.route is None:
            return
        if is_grpc:
            raise click.UsageError("--route is an HTTP path; a grpc:// URL has none")
        if not self.route.startswith("/"):
            raise click.BadParameter(f"--route must start with '/', got {self.route!r}")
        if self.model_version is not None:
            raise click.UsageError("--version picks a V2 route; --route names the route itself")
        if self.data is None and self.template is None:
            raise click.UsageError(
                "--route needs --data or --template: there is no metadata to build a body from"
            )

    def _bodies(self) -> list[bytes] | None:
        """The bodies from ``--data`` or ``--template``; None when neither was given."""
        if self.data is not None:
            return [self.data.read_bytes()]
        if self.template is None:
            return None
        try:
            return render_template(self.template.read_text(), self.bodies)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise click.ClickException(f"{self.template}: {exc}") from None

    def _http_requests(self, base: str) -> list[bytes]:
        from ..client import Client

        route = f"/v2/models/{quote(self.model, safe='')}"
        if self.model_version is not None:
            route += f"/versions/{quote(self.model_version, safe='')}"
        target = base + (self.route if self.route is not None else route + "/infer")
        bodies = self._bodies()
        if bodies is None:
            with Client(base, timeout_s=self.timeout_s) as client:
                try:
                    metadata: dict[str, Any] = json.loads(client.request("GET", route))
                except OSError as exc:
                    raise click.ClickException(
                        f"cannot reach {self.url}: {exc.strerror or exc}"
                    ) from None
            bodies = [self._from_metadata(metadata)]
        return [http_request(target, body) for body in bodies]

    def _grpc_requests(self, target: str) -> list[bytes]:
        """Serialized ``ModelInferRequest``s: the bodies or the metadata's, through the codecs."""
        from ..client import GrpcClient
        from ..errors import LigeiroError

        bodies = self._bodies()
        if bodies is None:
            with GrpcClient(target, timeout_s=self.timeout_s) as client:
                try:
                    metadata = client.model_metadata(self.model, self.model_version)
                except LigeiroError as exc:
                    raise click.ClickException(f"{self.url}: {self.model}: {exc}") from None
            bodies = [self._from_metadata(metadata)]
        try:
            return [infer_request_bytes(body, self.model, self.model_version) for body in bodies]
        except LigeiroError as exc:
            raise click.ClickException(f"{self.data or self.template}: {exc}") from None

    def _from_metadata(self, metadata: dict[str, Any]) -> bytes:
        try:
            return payload_from_metadata(metadata, self.batch_size)
        except ValueError as exc:
            raise click.ClickException(f"{self.model}: {exc}") from None

    def _warn(self, levels: list[Level]) -> None:
        busy = [level.label for level in levels if level.is_client_bound]
        if busy:
            click.echo(
                f"warning: the load generator used over {CLIENT_BUSY:.0%} of a core at "
                f"{', '.join(busy)}: it, not the server, may be the bottleneck there"
                + ("" if self.processes > 1 else "; try --processes N"),
                err=True,
            )
        for level in levels:
            not_sent = level.errors.get("not_sent", 0)
            if not_sent:
                click.echo(
                    f"warning: {level.label}: {not_sent} requests not sent (every one of "
                    f"--connections {self.connections} was busy)",
                    err=True,
                )

    def _meta(self, request_bytes: int, protocol: str) -> dict[str, Any]:
        return {
            "url": self.url,
            "protocol": protocol,
            "model": self.model,
            "version": self.model_version,
            "route": self.route,
            "template": None if self.template is None else str(self.template),
            "bodies": self.bodies if self.template is not None else 1,
            "window_s": self.window_s or None,
            "batch_size": self.batch_size,
            "request_bytes": request_bytes,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "processes": self.processes,
            "client_cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }


def _progress(level: Level) -> None:
    p99 = level.latency_ms.get("p99")
    click.echo(
        f"{level.label}: {level.throughput_per_s:,.1f} ok/s, "
        f"p99 {'-' if p99 is None else f'{p99:.2f}'} ms, {level.error_count} errors",
        err=True,
    )
