"""``ligeiro score`` on the command line: exit codes, one-line errors, the files written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ligeiro.cli import main

HEADER = "id,sepal_length,sepal_width,petal_length,petal_width\n"
GOOD = [f"{i},5.1,3.5,1.4,0.2\n" if i % 2 else f"{i},6.7,3.0,5.2,2.3\n" for i in range(1, 11)]


def csv_file(path: Path, bad_row: int | None = None) -> Path:
    lines = list(GOOD)
    if bad_row is not None:
        lines[bad_row - 1] = f"{bad_row},5.1,3.5,1.4,abc\n"
    path.write_text(HEADER + "".join(lines))
    return path


def test_scores_a_csv_into_parquet(
    tmp_path: Path, examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = csv_file(tmp_path / "in.csv")
    main(["score", str(examples / "iris"), str(source), "-o", str(tmp_path / "out.parquet"),
          "--keep", "id", "--batch-rows", "3"])  # fmt: skip
    assert capsys.readouterr().out.startswith("scored 10 rows from 1 file into ")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("id").to_pylist() == [str(i) for i in range(1, 11)]  # CSV: as text
    assert table.column("label_name").to_pylist()[:2] == ["iris-setosa", "iris-virginica"]


def test_bad_row_exits_2_with_one_line(
    tmp_path: Path, examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = csv_file(tmp_path / "in.csv", bad_row=7)
    output = tmp_path / "out.csv"
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(examples / "iris"), str(source), "-o", str(output)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {source}: row 7, column 'petal_width': expected a number (float), got 'abc'\n"
    )
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_reject_mode(tmp_path: Path, examples: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = csv_file(tmp_path / "in.csv", bad_row=7)
    main(["score", str(examples / "iris"), str(source), "-o", str(tmp_path / "out.jsonl"),
          "--on-error", "reject", "--rejects", str(tmp_path / "rejects.csv")])  # fmt: skip
    assert "; 1 rejected into " in capsys.readouterr().out
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 9
    rejects = (tmp_path / "rejects.csv").read_text().splitlines()
    assert rejects[1].startswith(f'"{source}",7,"petal_width","expected a number (float)')


def test_reject_needs_a_rejects_file(tmp_path: Path, examples: Path) -> None:
    source = csv_file(tmp_path / "in.csv")
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(examples / "iris"), str(source), "-o", str(tmp_path / "o.csv"),
              "--on-error", "reject"])  # fmt: skip
    assert exit_info.value.code == 2


def test_a_real_process_with_progress(tmp_path: Path, examples: Path) -> None:
    source = csv_file(tmp_path / "in.csv")
    done = subprocess.run(
        [sys.executable, "-m", "ligeiro", "score", str(examples / "iris"), str(source),
         "-o", str(tmp_path / "out.csv"), "--progress", "--workers", "2"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "10 rows" in done.stderr
    assert "rows/s" in done.stderr
    assert (tmp_path / "out.csv").read_text().count("\n") == 11
