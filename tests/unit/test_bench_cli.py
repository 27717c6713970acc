"""``ligeiro bench``'s parsing, payloads and reports, without a server."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ligeiro.bench import (
    Level,
    Stage,
    format_table,
    parse_concurrency,
    parse_stages,
    payload_from_metadata,
    to_html,
)
from ligeiro.bench._plan import stage_schedule
from ligeiro.cli import cli


@pytest.mark.parametrize(
    ("text", "levels"),
    [("1:64:x2", [1, 2, 4, 8, 16, 32, 64]), ("16", [16]), ("1,4,16", [1, 4, 16]),
     ("1:10:x3", [1, 3, 9])],
)  # fmt: skip
def test_parse_concurrency(text: str, levels: list[int]) -> None:
    assert parse_concurrency(text) == levels


@pytest.mark.parametrize("text", ["0", "a", "4:1:x2", "1:8:x1"])
def test_parse_concurrency_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|at least"):
        parse_concurrency(text)


def test_parse_stages_units() -> None:
    assert parse_stages("30s:120/m, 1m:10,500ms:5/s") == [
        Stage(30.0, 2.0),
        Stage(60.0, 10.0),
        Stage(0.5, 5.0),
    ]
    with pytest.raises(ValueError, match="stage '30x:1'"):
        parse_stages("30x:1")


def test_stage_schedule_follows_the_ramp() -> None:
    offsets, ends = stage_schedule(parse_stages("10s:100,10s:100"))
    assert ends == [10.0, 20.0]
    assert len(offsets) == 500 + 1000
    assert offsets == sorted(offsets)
    assert sum(1 for t in offsets if t <= 5 + 1e-9) == 125  # integral of 10 t over [0, 5]


def test_payload_from_metadata() -> None:
    meta = {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "n", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "s", "datatype": "BYTES", "shape": [-1]},
        {"name": "b", "datatype": "BOOL", "shape": [-1, 2]},
    ]}  # fmt: skip
    import json

    body = json.loads(payload_from_metadata(meta, batch_size=3))
    shapes = {t["name"]: (t["shape"], len(t["data"])) for t in body["inputs"]}
    assert shapes == {"x": ([3, 4], 12), "n": ([3, 1], 3), "s": ([3], 3), "b": ([3, 2], 6)}
    assert payload_from_metadata(meta, 3) == payload_from_metadata(meta, 3)  # seeded
    with pytest.raises(ValueError, match="needs a leading -1 axis"):
        payload_from_metadata({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}]}, 2)


def test_reports_render() -> None:
    level = Level("c=1", "concurrency", 1, 1.0, sent=10, ok=9, errors={"503": 1},
                  latency_ms={"p50": 1.0, "p90": 2.0, "p95": 2.5, "p99": 3.0, "max": 4.0},
                  throughput_per_s=9.0, client_cpu=0.95)  # fmt: skip
    table = format_table([level])
    assert "503:1" in table
    assert "95% (!)" in table
    page = to_html([level, level], {"model": "iris"})
    assert page.count("<svg") == 2
    assert "<script" not in page


def test_modes_are_exclusive() -> None:
    result = CliRunner().invoke(
        cli, ["bench", "http://127.0.0.1:1", "m", "--rate", "1", "--concurrency", "2"]
    )
    assert result.exit_code == 2
    assert "give one of" in result.output


def test_url_scheme_must_be_http_or_grpc() -> None:
    result = CliRunner().invoke(cli, ["bench", "ftp://127.0.0.1:1", "m"])
    assert result.exit_code == 2
    assert "grpc://127.0.0.1:8001" in result.output


def test_grpc_request_carries_the_json_tensors() -> None:
    from ligeiro.bench._grpcloop import infer_request_bytes
    from ligeiro.protocol.grpc_codec import decode_infer_request, decode_message, pb

    body = b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1.5,2.5]}]}'
    message = decode_message(pb.ModelInferRequest, infer_request_bytes(body, "m", "2"))
    assert (message.model_name, message.model_version) == ("m", "2")
    assert decode_infer_request(message).inputs["x"].tolist() == [[1.5, 2.5]]


def test_render_template_draws_each_body_within_its_ranges() -> None:
    import json

    from ligeiro.bench._payload import render_template

    bodies = render_template('{"a": {{uniform:4.3:7.9}}, "n": {{ int : 1 : 3 }}}', 200)
    rows = [json.loads(body) for body in bodies]
    assert all(4.3 <= row["a"] < 7.9 for row in rows)
    assert {row["n"] for row in rows} == {1, 2, 3}
    assert len({row["a"] for row in rows}) > 190
    assert render_template("{{uniform:0:1}}", 3) == render_template("{{uniform:0:1}}", 3)


@pytest.mark.parametrize(
    ("template", "message"),
    [("{{normal:0:1}}", r"expected \{\{uniform:LO:HI\}\}"), ("{{uniform:2:1}}", "LO is above"),
     ('{"a": {{int:1:2}},}', "does not render JSON")],
)  # fmt: skip
def test_render_template_rejects(template: str, message: str) -> None:
    from ligeiro.bench._payload import render_template

    with pytest.raises(ValueError, match=message):
        render_template(template, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["grpc://127.0.0.1:1", "m", "--route", "/predict"], "grpc:// URL has none"),
     (["http://127.0.0.1:1", "m", "--route", "predict", "--data", __file__], "start with '/'"),
     (["http://127.0.0.1:1", "m", "--data", __file__, "--template", __file__], "one of --data"),
     (["http://127.0.0.1:1", "m", "--window", "1", "--rate", "1"], "only with --stages")],
)  # fmt: skip
def test_body_options_are_checked_before_any_request(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code == 2
    assert message in result.output
