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

import os
import subprocess
import sys
from typing import TYPE_CHECKING

from tests.conftest import start_server

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Server

MAX_EXAMPLES = 10
TIMEOUT_S = 300
TOKEN = "schemathesis-admin-token"


def schemathesis(server: Server, folder: Path, *args: str) -> str:
    """Run ``schemathesis run`` on ``server``'s document; its output, or a test failure."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run",
        f"http://{server.host}:{server.port}/openapi.json",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--seed", "18",
        "--generation-database", "none", "--request-timeout", "30", "--no-color",
        "--report", "junit", "--report-dir", str(folder), *args,
    ]  # fmt: skip
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=folder, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20_000:]
    assert "passed" in output and "failures" not in output.split("SUMMARY")[-1], output[-5_000:]
    return output


def test_schemathesis_finds_no_5xx_and_no_schema_mismatch(server: Server, tmp_path: Path) -> None:
    output = schemathesis(server, tmp_path, "--phases", "examples,coverage,fuzzing")
    operations = server.get("/openapi.json").json()["paths"]
    tested = sum(method in ("get", "post") for p in operations.values() for method in p)
    # Every operation but GET /openapi.json, the document itself, which schemathesis skips.
    assert f"Tested: {tested - 1}" in output, output[-5_000:]


def test_schemathesis_on_the_repository_api_with_its_admin_token(
    repository: Path, tmp_path: Path
) -> None:
    """Explicit model control: load, unload and index, with the token and without it
    (``ignored_auth``), and in sequences (the stateful phase)."""
    env = {**os.environ, "LIGEIRO_ADMIN_TOKEN": TOKEN}
    srv = start_server(repository, "--model-control", "explicit", env=env)
    try:
        output = schemathesis(
            srv, tmp_path, "--include-path-regex", "^/v2/repository/",
            "--header", f"Authorization: Bearer {TOKEN}",
            "--phases", "examples,coverage,fuzzing,stateful",
        )  # fmt: skip
        assert "Tested: 3" in output, output[-5_000:]
    finally:
        srv.stop()
