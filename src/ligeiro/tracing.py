"""OpenTelemetry tracing: one span per inference request, off unless asked for.

Tracing is on when ``otel_endpoint`` is set (``--otel-endpoint``,
``LIGEIRO_OTEL_ENDPOINT``) or the environment names an OTLP endpoint or a traces
exporter (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_TRACES_EXPORTER``); ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``
keep it off (``server/app.py`` holds the rule). ``OTEL_TRACES_EXPORTER`` other than
``otlp`` names an exporter installed under the ``opentelemetry_traces_exporter``
entry point, as the OpenTelemetry SDK reads it (its own ``console``, or a plugin's). Off, the servers hold ``None`` instead
of a ``Tracing``, and neither this module nor opentelemetry is imported.

Each request gets a server span ``ligeiro.infer``, a child of the W3C ``traceparent``
it came with (HTTP header or gRPC metadata), and children ``decode``, ``queue`` (batched
models only), ``compute`` and ``encode``. Spans go to an OTLP/HTTP collector through a
``BatchSpanProcessor`` (its own thread in each worker), so the event loop only builds
them.

Queue and compute of a batched model are not measured per request by the batcher, so
they are split from the model's statistics: ``compute`` is the mean run time of the
batches of that model that finished while the request was in the engine, ending when
the request's answer came back, and ``queue`` is the rest. When one batch finished
(its own) that is exact; when several did (the request waited behind others, or
several instances ran), it is their mean, and the span's ``ligeiro.batch.runs``
attribute says how many. Requests in one batch share its compute time.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, final

from .errors import ConfigError

try:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - depends on the extra
    raise ConfigError("tracing needs OpenTelemetry: pip install 'ligeiro[otel]'") from None

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.context import Context

    from .repository.registry import ModelVersion

__all__ = ["RequestTrace", "Tracing"]

logger = logging.getLogger(__name__)

# Where OTEL_TRACES_EXPORTER's other names are found, as the OpenTelemetry SDK does.
_EXPORTERS = "opentelemetry_traces_exporter"
_OTLP = ("otlp", "otlp_proto_http")
_TRACES_PATH = "/v1/traces"
_propagator = TraceContextTextMapPropagator()
_SERVER = trace.SpanKind.SERVER
_ERROR = trace.Status(trace.StatusCode.ERROR)


def _exporter(endpoint: str | None, env: Mapping[str, str]) -> SpanExporter:
    kind = env.get("OTEL_TRACES_EXPORTER", "otlp").strip()
    if kind.lower() not in _OTLP:
        found = entry_points(group=_EXPORTERS, name=kind)
        if not found:
            installed = sorted({e.name for e in entry_points(group=_EXPORTERS)} - {*_OTLP})
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={kind!r}: no such exporter; ligeiro exports traces "
                f"with 'otlp' (over HTTP), 'none', or an exporter installed under the "
                f"{_EXPORTERS!r} entry point ({', '.join(installed) or 'none is'})"
            )
        made: SpanExporter = next(iter(found)).load()()
        return made
    if endpoint is None:
        return OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT itself
    # As OTEL_EXPORTER_OTLP_ENDPOINT: a base URL, the signal's path appended.
    url = endpoint if endpoint.endswith(_TRACES_PATH) else endpoint.rstrip("/") + _TRACES_PATH
    return OTLPSpanExporter(endpoint=url)


@final
class Tracing:
    """A worker's tracer: starts request traces, exports them in the background.

    Args:
        endpoint: the OTLP/HTTP collector's base URL (``http://host:4318``); ``None``
            for the ``OTEL_EXPORTER_OTLP_*`` variables or the exporter's default.
        env: the environment (default ``os.environ``).

    Raises:
        ConfigError: the extra is not installed, or ``OTEL_TRACES_EXPORTER`` names an
            exporter that is not installed.
    """

    def __init__(self, endpoint: str | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        service = env.get("OTEL_SERVICE_NAME") or "ligeiro"
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": service, "process.pid": os.getpid()})
        )
        self._provider.add_span_processor(BatchSpanProcessor(_exporter(endpoint, env)))
        self._tracer = self._provider.get_tracer("ligeiro")

    def start(
        self, protocol: str, traceparent: str | None, tracestate: str | None = None
    ) -> RequestTrace:
        """A request's server span, the child of ``traceparent`` when one came with it."""
        context = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent}
            if tracestate is not None:
                carrier["tracestate"] = tracestate
            context = _propagator.extract(carrier)
        span = self._tracer.start_span("ligeiro.infer", context, _SERVER)
        span.set_attribute("ligeiro.protocol", protocol)
        return RequestTrace(self._tracer, span)

    def close(self) -> None:
        """Export what is pending and stop the exporter's thread."""
        self._provider.shutdown()


@final
class RequestTrace:
    """One request's server span and the stages recorded under it."""

    __slots__ = ("_context", "_span", "_tracer", "request_id")

    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self._span = span
        self.request_id: str | None = None  # the V2 request's id, once decoded
        self._context: Context = trace.set_span_in_context(span)

    def stage(self, name: str, start_ns: int, end_ns: int, runs: int = 0) -> None:
        """A child span that ran from ``start_ns`` to ``end_ns`` (``time.time_ns()``)."""
        span = self._tracer.start_span(name, self._context, start_time=start_ns)
        if runs:
            span.set_attribute("ligeiro.batch.runs", runs)
        span.end(end_ns)

    def model(self, model: ModelVersion) -> None:
        """The model version that serves the request."""
        self._span.set_attribute("ligeiro.model", model.name)
        self._span.set_attribute("ligeiro.version", model.version)

    def ran(self, start_ns: int, end_ns: int, runs: int, run_ns: int) -> None:
        """A batched model's ``queue`` and ``compute``: the request was in the engine from
        ``start_ns`` to ``end_ns``, while ``runs`` batches of its model took ``run_ns``.
        """
        computing = max(start_ns, end_ns - run_ns // runs) if runs else end_ns
        self.stage("queue", start_ns, computing)
        self.stage("compute", computing, end_ns, runs)

    def finish(self, status: str, ok: bool) -> None:
        """End the server span with the request's answer (an HTTP status or gRPC code)."""
        span = self._span
        span.set_attribute("ligeiro.status", status)
        if self.request_id is not None:
            span.set_attribute("ligeiro.request_id", self.request_id)
        if not ok:
            span.set_status(_ERROR)
        span.end()
