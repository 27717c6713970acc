"""``python -m benchmarks.bytecodes`` counts what an answered iris request executes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import bytecodes


@pytest.mark.parametrize("route", ["v2", "predict", "grpc"])
def test_a_request_is_answered_and_its_bytecodes_counted(
    route: str, examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bytecodes.main(["--route", route, "--top", "20"]) == 0
    out = capsys.readouterr().out
    total = re.match(rf"{route}: (\d+) bytecodes and (\d+) Python calls a request", out)
    assert total is not None, out
    assert int(total[1]) > 500 and int(total[2]) > 20  # the path runs, and is counted
    rows = [line for line in out.splitlines()[2:] if line.strip()]
    assert len(rows) == 20 and any("dataplane.py:DataPlane.infer" in row for row in rows), out
