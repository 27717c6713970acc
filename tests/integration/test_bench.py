"""``ligeiro bench`` against a real ``ligeiro serve`` (the shared ``server`` fixture)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from click.testing import CliRunner

from ligeiro.cli import cli
from tests.conftest import IRIS_REQUEST

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Server


def _bench(server: Server, *args: str) -> tuple[int, str]:
    url = f"http://{server.host}:{server.port}"
    result = CliRunner().invoke(cli, ["bench", url, *args])
    return result.exit_code, result.output


def test_concurrency_sweep_reports_every_level(server: Server, tmp_path: Path) -> None:
    out, page = tmp_path / "bench.json", tmp_path / "bench.html"
    code, output = _bench(
        server, "iris", "--concurrency", "1:4:x2", "--duration", "0.7",
        "--json", str(out), "--html", str(page),
    )  # fmt: skip
    assert code == 0, output
    report = json.loads(out.read_text())
    levels = report["levels"]
    assert [level["label"] for level in levels] == ["c=1", "c=2", "c=4"]
    for level in levels:
        assert level["ok"] > 0
        assert level["errors"] == {}
        ms = level["latency_ms"]
        assert ms["p50"] <= ms["p90"] <= ms["p95"] <= ms["p99"] <= ms["max"]
        assert level["throughput_per_s"] > 0
        assert level["server_cpu_cores"] is not None
        assert level["server_rss_bytes"] > 0
        assert level["client_cpu"] >= 0
    assert report["meta"]["model"] == "iris"
    html = page.read_text()
    assert html.count("<svg") == 2
    assert "<script" not in html
    assert "p99" in output


def test_rate_is_achieved(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "iris.json"
    data.write_text(json.dumps(IRIS_REQUEST))
    out = tmp_path / "rate.json"
    code, output = _bench(
        server, "iris", "--data", str(data), "--rate", "200", "--duration", "1.5",
        "--json", str(out),
    )  # fmt: skip
    assert code == 0, output
    (level,) = json.loads(out.read_text())["levels"]
    assert level["mode"] == "rate"
    assert abs(level["throughput_per_s"] - 200) <= 40


def test_stages_ramp(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "stages.json"
    code, output = _bench(server, "mlp", "--stages", "0.5s:100,0s:50,0.5s:50", "--json", str(out))
    assert code == 0, output
    levels = json.loads(out.read_text())["levels"]
    assert [level["mode"] for level in levels] == ["stage", "stage"]
    # A ramp 0 -> 100/s over 0.5 s sends 25; a flat 50/s for 0.5 s sends 25.
    assert [level["sent"] for level in levels] == [25, 25]


def test_errors_are_counted_and_fail_the_run(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "iris.json"
    data.write_text(json.dumps(IRIS_REQUEST))
    out = tmp_path / "errors.json"
    code, output = _bench(
        server, "no-such-model", "--data", str(data), "--concurrency", "2",
        "--duration", "0.3", "--json", str(out),
    )  # fmt: skip
    assert code == 1, output
    (level,) = json.loads(out.read_text())["levels"]
    assert level["ok"] == 0
    assert level["errors"]["404"] == level["sent"] > 0


def test_unknown_model_without_data_stops_at_metadata(server: Server) -> None:
    url = f"http://{server.host}:{server.port}"
    result = CliRunner().invoke(cli, ["bench", url, "no-such-model", "--duration", "0.2"])
    assert result.exit_code != 0
    assert "no-such-model" in str(result.exception)


def _bench_grpc(server: Server, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["bench", f"grpc://{server.grpc_target}", *args])
    return result.exit_code, result.output


def test_grpc_concurrency_sweep(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "grpc.json"
    code, output = _bench_grpc(
        server, "iris", "--concurrency", "1:2:x2", "--duration", "0.5", "--json", str(out)
    )
    assert code == 0, output
    report = json.loads(out.read_text())
    assert report["meta"]["protocol"] == "grpc"
    levels = report["levels"]
    assert [level["label"] for level in levels] == ["c=1", "c=2"]
    for level in levels:
        assert level["ok"] == level["sent"] > 0
        assert level["errors"] == {}
        assert level["latency_ms"]["p50"] <= level["latency_ms"]["p99"]
        assert level["server_cpu_cores"] is None  # no --metrics-url: n/a
    assert "n/a" in output


def test_grpc_rate_is_achieved_with_metrics(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "iris.json"
    data.write_text(json.dumps(IRIS_REQUEST))
    out = tmp_path / "grpc-rate.json"
    code, output = _bench_grpc(
        server, "iris", "--data", str(data), "--rate", "200", "--duration", "1.5",
        "--metrics-url", f"http://{server.host}:{server.port}/metrics", "--json", str(out),
    )  # fmt: skip
    assert code == 0, output
    (level,) = json.loads(out.read_text())["levels"]
    assert level["mode"] == "rate"
    assert abs(level["throughput_per_s"] - 200) <= 50
    assert level["server_rss_bytes"] > 0


def test_grpc_errors_are_counted_by_code_name(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "iris.json"
    data.write_text(json.dumps(IRIS_REQUEST))
    out = tmp_path / "grpc-errors.json"
    code, output = _bench_grpc(
        server, "no-such-model", "--data", str(data), "--concurrency", "2",
        "--duration", "0.3", "--json", str(out),
    )  # fmt: skip
    assert code == 1, output
    (level,) = json.loads(out.read_text())["levels"]
    assert level["ok"] == 0
    assert level["errors"] == {"NOT_FOUND": level["sent"]}
    assert level["sent"] > 0
    assert "NOT_FOUND:" in output


def test_grpc_unknown_model_without_data_stops_at_metadata(server: Server) -> None:
    code, output = _bench_grpc(server, "no-such-model", "--duration", "0.2")
    assert code == 1
    assert "no-such-model" in output


SEED_TEMPLATE = (
    '{"sepal_length": {{uniform:4.3:7.9}}, "sepal_width": {{uniform:2:4.4}}, '
    '"petal_length": {{uniform:1:6.9}}, "petal_width": {{uniform:0.1:2.5}}}'
)


def test_route_and_template_load_a_non_v2_route(server: Server, tmp_path: Path) -> None:
    """Seed 003's random iris rows on ``:predict``, a route that takes no V2 body."""
    template = tmp_path / "seed.json.tmpl"
    template.write_text(SEED_TEMPLATE)
    out = tmp_path / "route.json"
    code, output = _bench(
        server, "iris", "--route", "/v1/models/iris:predict", "--template", str(template),
        "--bodies", "50", "--stages", "0.6s:100,0.6s:100", "--window", "0.3",
        "--json", str(out),
    )  # fmt: skip
    assert code == 0, output
    report = json.loads(out.read_text())
    assert report["meta"]["route"] == "/v1/models/iris:predict"
    assert report["meta"]["bodies"] == 50
    stages = report["levels"]
    assert [level["mode"] for level in stages] == ["stage", "stage"]
    assert sum(level["ok"] for level in stages) == 30 + 60
    windows = report["windows"]
    assert [w["label"] for w in windows] == ["0s", "0.3s", "0.6s", "0.9s"]
    assert sum(w["ok"] for w in windows) == 90
    assert all(w["errors"] == {} for w in windows)
    # The ramp 0 -> 100/s schedules 7.5 then 22.5 requests; the flat 100/s, 30 and 30.
    assert [round(w["target"] * 0.3) for w in windows] == [7, 23, 30, 30]
    assert "0.3s" not in output  # windows are in the JSON, not the table


def test_route_without_a_body_is_refused(server: Server, tmp_path: Path) -> None:
    code, output = _bench(server, "iris", "--route", "/predict", "--rate", "1")
    assert code == 2
    assert "--route needs --data or --template" in output
