from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ligeiro import __version__
from ligeiro.cli import cli, main


def test_version() -> None:
    result = CliRunner().invoke(cli, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == __version__


def test_print_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGEIRO_HTTP__MAX_REQUEST_BYTES", "1234")
    result = CliRunner().invoke(
        cli, ["serve", "models", "--port", "9001", "--workers", "2", "--print-config"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)
    assert config["http"]["port"] == 9001
    assert config["http"]["max_request_bytes"] == 1234
    assert config["http"]["keep_alive_timeout_s"] == 60.0
    assert config["workers"] == 2


def test_bad_setting_is_one_line_with_its_exit_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIGEIRO_HTTP__PORT", "x")
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "models", "--print-config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err
        == "error: environment (LIGEIRO_* variables): Expected `int`, got `str` - at `$.http.port`\n"
    )


def test_providers_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    command = ["serve", "models", "--providers", "cuda,cpu", "--print-config"]
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["runtime"]["providers"] == ["cuda", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "models", "--providers", "cpu,cuda", "--print-config"])
    assert exit_info.value.code == 2
    assert "'cpu' runs every model" in capsys.readouterr().err
