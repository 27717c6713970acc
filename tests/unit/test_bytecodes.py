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


def test_the_raw_floor_is_counted_on_the_same_request(
    examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bytecodes.main(["--route", "floor", "--top", "5"]) == 0
    out = capsys.readouterr().out
    total = re.match(r"floor: (\d+) bytecodes and (\d+) Python calls a request", out)
    assert total is not None and int(total[1]) > 100, out
    assert "raw_floor.py:Connection.on_message_complete" in out, out


def test_instructions_are_counted_over_the_loop_alone(
    examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--instructions``: the gRPC route (its frames made for exactly that many
    requests) under callgrind, its count per request read from the loop's part."""
    assert bytecodes.main(["--route", "grpc", "--instructions", "20"]) == 0
    out = capsys.readouterr().out
    found = re.match(r"grpc: ([\d,]+) instructions a request \(callgrind, 20 requests", out)
    assert found is not None, out
    # A request is tens of thousands of instructions at least: the loop was counted, not
    # only the markers around it; and not the start-up's hundreds of millions.
    assert 20_000 < int(found[1].replace(",", "")) < 5_000_000, out


def test_instructions_take_a_positive_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        bytecodes.main(["--instructions", "0"])
    assert stopped.value.code == 2
    assert "--instructions takes a number of requests >= 1, got 0" in capsys.readouterr().err
