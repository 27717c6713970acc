"""A command that needs an optional extra, run without it, says which one in one line and
exits 2 — in a real environment that has only ``pip install ligeiro`` (``core_venv``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ligeiro.extras import missing_packages, packages, require

from ..conftest import ROOT


def _ligeiro(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "ligeiro"), *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )


def _one_line(result: subprocess.CompletedProcess[str], extra: str) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"pip install 'ligeiro[{extra}]'" in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "extra", "names"),
    [
        (("convert", "x.joblib", "--data", "x.csv", "--out", "r/x"), "convert", "ligeiro convert"),
        (("optimize", "models/iris", "--mode", "int8"), "convert", "ligeiro optimize"),
        (("score", "models/iris", "rows.csv", "-o", "out.csv"), "score", "ligeiro score"),
        (("package", "models/iris", "--out", "r"), "package", "ligeiro package"),
    ],
    ids=["convert", "optimize", "score", "package"],
)
def test_a_command_without_its_extra_names_it(
    core_venv: Path, tmp_path: Path, args: tuple[str, ...], extra: str, names: str
) -> None:
    (tmp_path / "models" / "iris").mkdir(parents=True)
    line = _one_line(_ligeiro(core_venv, *args, cwd=tmp_path), extra)
    assert line.startswith(f"error: {names} needs the '{extra}' extra")
    # nothing was written, and --help still answers without the extra
    assert not (tmp_path / "r").exists()
    assert _ligeiro(core_venv, args[0], "--help", cwd=tmp_path).returncode == 0


def test_serving_with_tracing_but_no_otel_extra_exits_2(core_venv: Path, tmp_path: Path) -> None:
    result = _ligeiro(
        core_venv, "serve", str(ROOT / "examples" / "models"), "--port", "0", "--grpc-port", "0",
        "--otel-endpoint", "http://127.0.0.1:9/v1/traces", cwd=tmp_path,
    )
    assert "tracing" in _one_line(result, "otel")


def test_spark_scoring_names_the_spark_extra(core_venv: Path, tmp_path: Path) -> None:
    """With the score extra but no pyspark, --engine spark asks for ligeiro[spark]."""
    pip = [str(core_venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check", "-c", str(ROOT / "constraints.txt")]
    subprocess.run([*pip, "pyarrow"], check=True, timeout=300)
    (tmp_path / "rows.csv").write_text("a,b,c,d\n1,2,3,4\n")
    result = _ligeiro(
        core_venv, "score", str(ROOT / "examples" / "models" / "iris"), "rows.csv",
        "-o", "out", "--engine", "spark", cwd=tmp_path,
    )
    assert "ligeiro score --engine spark needs the 'spark'" in _one_line(result, "spark")


def test_the_test_environment_has_every_extra_it_tests() -> None:
    """The metadata read is ligeiro's own: nested extras (examples → text-build → text)
    expand, and an installed extra passes."""
    assert {"scikit-learn", "torch", "tokenizers"} <= set(packages("examples"))
    for extra in ("convert", "score", "spark", "otel", "examples", "package"):
        assert missing_packages(extra) == [], extra
        require(extra, extra)
    assert packages("no-such-extra") == []
