"""schemathesis drives a live server from its own /openapi.json: no request yields a 5xx,
every status and content type is one the document lists, every answer matches its
schema, and requests the document calls invalid are refused.

Bounded: examples, the coverage phase and at most ``MAX_EXAMPLES`` generated cases per
operation, one worker (about 30 s on the example repository). Left out is
``positive_data_acceptance`` (every schema-valid request is accepted), which JSON Schema
cannot make true of V2: a tensor's ``data`` must hold as many elements as its ``shape``
multiplies to, and a model may refuse values its datatype allows (the example tokenizer
refuses an empty string, mlp an empty batch). Those answers are 400s, which the check
that statuses conform does hold the server to.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Server

MAX_EXAMPLES = 10
TIMEOUT_S = 300


def test_schemathesis_finds_no_5xx_and_no_schema_mismatch(server: Server, tmp_path: Path) -> None:
    url = f"http://{server.host}:{server.port}/openapi.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", url,
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES),
        "--workers", "1", "--seed", "18", "--generation-database", "none",
        "--request-timeout", "30", "--no-color", "--report", "junit",
        "--report-dir", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20_000:]
    operations = server.get("/openapi.json").json()["paths"]
    tested = sum(method in ("get", "post") for p in operations.values() for method in p)
    # Every operation but GET /openapi.json, the document itself, which schemathesis skips.
    assert f"Tested: {tested - 1}" in output, output[-5_000:]
    assert " passed" in output and "failures" not in output.split("SUMMARY")[-1]
