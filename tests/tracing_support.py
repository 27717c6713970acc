"""A span exporter for tests that read a server process's spans back.

``install_test_exporter`` writes a dist-info folder that registers ``exporter`` under
the ``opentelemetry_traces_exporter`` entry point as ``TEST_EXPORTER``; ``ligeiro serve``
with that folder on ``PYTHONPATH`` and ``OTEL_TRACES_EXPORTER=ligeiro_test_file`` (the
way a user names a plugin exporter) exports to it instead of OTLP: each finished span
becomes one JSON line in the file named by ``_LIGEIRO_SPAN_FILE`` (the test's in-memory
exporter, moved across the process boundary).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

SPAN_FILE_ENV = "_LIGEIRO_SPAN_FILE"
TEST_EXPORTER = "ligeiro_test_file"


class FileSpanExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            context = span.get_span_context()
            assert context is not None
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "kind": span.kind.name,
                        "trace_id": f"{context.trace_id:032x}",
                        "span_id": f"{context.span_id:016x}",
                        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
                        "start": span.start_time,
                        "end": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": dict(span.attributes or {}),
                        "service": (span.resource.attributes or {}).get("service.name"),
                    }
                )
            )
        with open(self.path, "a") as out:
            out.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def exporter() -> FileSpanExporter:
    return FileSpanExporter(os.environ[SPAN_FILE_ENV])


def install_test_exporter(folder: Path) -> Path:
    """Register ``exporter`` as ``TEST_EXPORTER`` in a dist-info under ``folder``; return
    ``folder``, for ``PYTHONPATH``."""
    info = folder / "ligeiro_test_exporter-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ligeiro-test-exporter\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        f"[opentelemetry_traces_exporter]\n{TEST_EXPORTER} = tests.tracing_support:exporter\n"
    )
    return folder
