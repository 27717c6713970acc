"""``ligeiro.score``: files in, predictions out, equal to the engine's row for row."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from ligeiro import Engine
from ligeiro.errors import InvalidInputError, ModelNotFoundError
from ligeiro.score import ScoreOptions, score_files
from ligeiro.score.progress import Progress

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABELS = ["iris-setosa", "iris-versicolor", "iris-virginica"]


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    """300 iris-like rows with an id, rounded like the real data set."""
    rng = np.random.default_rng(8)
    means = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    x = (means[rng.integers(0, 3, 300)] + rng.normal(0, 0.3, (300, 4))).round(1)
    return pa.table({"id": np.arange(1000, 1300), **{f: x[:, j] for j, f in enumerate(FEATURES)}})


@pytest.fixture(scope="module")
def expected(examples: Path, rows: pa.Table) -> dict[str, np.ndarray]:
    x = np.column_stack([rows.column(f).to_numpy() for f in FEATURES]).astype(np.float32)
    with Engine.from_repository(examples) as engine:
        result = engine.infer("iris", {"float_input": x})
    return {"label": result["output_label"], "probability": result["output_probability"]}


@pytest.fixture
def model(examples: Path) -> Path:
    return examples / "iris"


def write(table: pa.Table, path: Path) -> Path:
    if path.suffix == ".csv":
        pcsv.write_csv(table, path)
    elif path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    return path


def read(path: Path) -> pa.Table:
    if path.suffix == ".csv":
        return pcsv.read_csv(path)
    if path.suffix == ".parquet":
        return pq.read_table(path)
    return pa.Table.from_pylist([json.loads(line) for line in path.read_text().splitlines()])


def assert_predictions(table: pa.Table, expected: dict[str, np.ndarray]) -> None:
    assert table.column("label").to_pylist() == expected["label"].tolist()
    names = [str(v) for v in table.column("label_name").to_pylist()]
    assert names == [LABELS[i] for i in expected["label"]]
    for j, label in enumerate(LABELS):
        got = table.column(f"probability_{label}").to_numpy()
        np.testing.assert_allclose(got, expected["probability"][:, j], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("source", "output"),
    [("in.csv", "out.parquet"), ("in.parquet", "out.csv"), ("in.jsonl", "out.jsonl")],
)
def test_scores_like_the_engine(
    tmp_path: Path,
    model: Path,
    rows: pa.Table,
    expected: dict[str, np.ndarray],
    source: str,
    output: str,
) -> None:
    summary = score_files(
        model,
        write(rows, tmp_path / source),
        tmp_path / output,
        ScoreOptions(keep=["id"], batch_rows=64),
    )
    assert summary.rows == 300
    assert summary.rejected == 0
    table = read(tmp_path / output)
    assert table.column_names == ["id", "label", "label_name"] + [
        f"probability_{n}" for n in LABELS
    ]
    assert [int(v) for v in table.column("id").to_pylist()] == list(range(1000, 1300))
    assert_predictions(table, expected)


def test_columns_option_maps_other_names(
    tmp_path: Path, model: Path, rows: pa.Table, expected: dict[str, np.ndarray]
) -> None:
    renamed = rows.rename_columns(["id", "a", "b", "c", "d"])
    score_files(
        model,
        write(renamed, tmp_path / "in.parquet"),
        tmp_path / "out.parquet",
        ScoreOptions(columns=["a", "b", "c", "d"]),
    )
    table = read(tmp_path / "out.parquet")
    assert table.column_names[0] == "label"  # nothing kept unless asked
    assert_predictions(table, expected)


def test_version_folder_and_missing_column(tmp_path: Path, model: Path, rows: pa.Table) -> None:
    source = write(rows.drop_columns(["petal_width"]), tmp_path / "in.csv")
    with pytest.raises(InvalidInputError, match=r"in\.csv: missing column 'petal_width'; it has"):
        score_files(model / "1", source, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_a_flat_model_folder_scores_as_its_version_1(
    tmp_path: Path, model: Path, rows: pa.Table, expected: dict[str, np.ndarray]
) -> None:
    """model.onnx and config.toml side by side (what ``serve DIR --model-name`` and
    ``ligeiro.load`` take) score like the versioned folder."""
    flat = tmp_path / "flat-iris"
    flat.mkdir()
    shutil.copy(model / "config.toml", flat / "config.toml")
    for file in (model / "1").iterdir():
        shutil.copy(file, flat / file.name)
    score_files(flat, write(rows, tmp_path / "in.csv"), tmp_path / "out.csv")
    assert_predictions(read(tmp_path / "out.csv"), expected)


def test_not_a_model_folder(tmp_path: Path, rows: pa.Table) -> None:
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        score_files(tmp_path, write(rows, tmp_path / "in.csv"), tmp_path / "out.csv")


def bad_csv(rows: pa.Table, path: Path) -> Path:
    """The rows as CSV with 'abc' as petal_width on data row 7."""
    write(rows, path)
    lines = path.read_text().splitlines()
    fields = lines[7].split(",")
    lines[7] = ",".join([*fields[:-1], "abc"])
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_bad_value_fails_with_file_row_and_column(
    tmp_path: Path, model: Path, rows: pa.Table
) -> None:
    source = bad_csv(rows, tmp_path / "in.csv")
    message = r"in\.csv: row 7, column 'petal_width': expected a number \(float\), got 'abc'"
    with pytest.raises(InvalidInputError, match=message):
        score_files(model, source, tmp_path / "out.parquet", ScoreOptions(batch_rows=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # no partial output


def test_reject_writes_the_good_rows_and_the_bad_ones_apart(
    tmp_path: Path, model: Path, rows: pa.Table, expected: dict[str, np.ndarray]
) -> None:
    source = bad_csv(rows, tmp_path / "in.csv")
    options = ScoreOptions(
        keep=["id"], on_error="reject", rejects=tmp_path / "rejects.csv", batch_rows=4
    )
    summary = score_files(model, source, tmp_path / "out.csv", options)
    assert (summary.rows, summary.rejected) == (299, 1)
    table = read(tmp_path / "out.csv")
    assert 1006 not in table.column("id").to_pylist()
    keep = np.arange(300) != 6
    assert_predictions(
        table, {"label": expected["label"][keep], "probability": expected["probability"][keep]}
    )
    rejects = pcsv.read_csv(tmp_path / "rejects.csv").to_pylist()
    assert len(rejects) == 1
    assert rejects[0]["row"] == 7
    assert rejects[0]["column"] == "petal_width"
    assert rejects[0]["error"] == "expected a number (float), got 'abc'"
    assert rejects[0]["id"] == 1006
    assert rejects[0]["petal_width"] == "abc"


def test_jsonl_missing_values_are_bad_rows_or_nan(
    tmp_path: Path, model: Path, rows: pa.Table
) -> None:
    source = write(rows.slice(0, 5), tmp_path / "in.jsonl")
    lines = source.read_text().splitlines()
    record = json.loads(lines[2])
    del record["sepal_width"]
    lines[2] = json.dumps(record)
    lines.insert(4, "")  # a blank line: skipped, but line numbers stay true
    lines[5] = "{not json"
    source.write_text("\n".join(lines) + "\n")
    options = ScoreOptions(on_error="reject", rejects=tmp_path / "rejects.jsonl")
    summary = score_files(model, source, tmp_path / "out.jsonl", options)
    assert (summary.rows, summary.rejected) == (3, 2)
    rejects = read(tmp_path / "rejects.jsonl").to_pylist()
    assert [(r["row"], r["column"]) for r in rejects] == [(3, "sepal_width"), (6, "")]
    assert rejects[0]["error"] == "missing value"
    assert rejects[1]["error"].startswith("not valid JSON")
    # With --nulls nan the model's imputer fills the missing value.
    source.write_text("\n".join(lines[:3]) + "\n")
    options = ScoreOptions(nulls_as_nan=True)
    assert score_files(model, source, tmp_path / "nan.jsonl", options).rows == 3


def test_a_directory_of_files(
    tmp_path: Path, model: Path, rows: pa.Table, expected: dict[str, np.ndarray]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write(rows.slice(100 * i, 100), folder / f"part-{i}.parquet")
    summary = score_files(model, folder, tmp_path / "all.csv", ScoreOptions(keep=["id"]))
    assert (summary.rows, summary.files) == (300, 3)
    assert_predictions(read(tmp_path / "all.csv"), expected)
    score_files(model, folder, tmp_path / "out", ScoreOptions(output_format="jsonl"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "part-0.jsonl",
        "part-1.jsonl",
        "part-2.jsonl",
    ]
    assert read(tmp_path / "out" / "part-2.jsonl").column("label").to_pylist() == (
        expected["label"][200:].tolist()
    )


def test_two_workers_write_what_one_writes(tmp_path: Path, model: Path, rows: pa.Table) -> None:
    source = bad_csv(pa.concat_tables([rows] * 4), tmp_path / "in.csv")
    outputs = []
    for workers in (1, 2):
        options = ScoreOptions(
            keep=["id"],
            batch_rows=50,
            workers=workers,
            on_error="reject",
            rejects=tmp_path / f"rejects-{workers}.parquet",
        )
        score_files(model, source, tmp_path / f"out-{workers}.parquet", options)
        outputs.append(tmp_path / f"out-{workers}.parquet")
    assert pq.read_table(outputs[0]).equals(pq.read_table(outputs[1]))
    one, two = (pq.read_table(tmp_path / f"rejects-{w}.parquet") for w in (1, 2))
    assert one.equals(two)
    assert one.column("row").to_pylist() == [7]


def test_empty_input_writes_an_empty_file(tmp_path: Path, model: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(",".join(FEATURES) + "\n")
    assert score_files(model, source, tmp_path / "out.parquet").rows == 0
    assert pq.read_table(tmp_path / "out.parquet").column_names[:2] == ["label", "label_name"]


def test_progress_line_is_throttled_and_shows_eta() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, total=1000, clock=lambda: now[0])
    now[0] = 1.0
    progress.advance(100)
    now[0] = 1.1
    progress.advance(100)  # within 0.2 s of the last redraw: not drawn
    assert stream.getvalue() == "\r100 rows  100 rows/s   10.0%  ETA 0:00:09"
    now[0] = 2.0
    progress.advance(200)
    progress.close()
    assert stream.getvalue().endswith("400 rows  200 rows/s   40.0%  ETA 0:00:03\n")
    assert Progress(None).line().startswith("0 rows")
