"""``ligeiro.spark`` on real pyspark (local[2]) over real files: batch, streaming, the CLI.

Every scored output is checked row for row against ``ligeiro score`` on the same file
and against the model's in-process predictions (``Engine``): labels identical,
probabilities within 1e-6. Java 17+ comes from PATH or from ``make``'s
scripts/fetch_java.sh (``.venv/java/JAVA_HOME``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from pyspark.errors import PythonException
from pyspark.sql import SparkSession
from sklearn.datasets import load_iris

from ligeiro import Engine, InvalidInputError
from ligeiro.cli import main
from ligeiro.score import ScoreOptions, score_files
from ligeiro.spark import score

from ..conftest import ROOT, debian_tool

# pyspark 4.3 warns, on every DataFrame.mapInArrow, that it was not tested with pandas 3.
pytestmark = pytest.mark.filterwarnings(
    "ignore:PySpark does not yet fully support pandas:FutureWarning"
)

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABELS = ["iris-setosa", "iris-versicolor", "iris-virginica"]
PROBABILITIES = [f"probability_{name}" for name in LABELS]
JAVA_HOME_FILE = ROOT / ".venv" / "java" / "JAVA_HOME"


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    """One local[2] session for the module: a JVM takes ~15 s to start on 2 cores."""
    with pytest.MonkeyPatch.context() as env:
        if "JAVA_HOME" not in os.environ and JAVA_HOME_FILE.is_file():
            env.setenv("JAVA_HOME", JAVA_HOME_FILE.read_text().strip())
        if "JAVA_HOME" in os.environ:  # pyspark 4 needs Java 17+: say which Java it found
            java = debian_tool(Path(os.environ["JAVA_HOME"]) / "bin" / "java",
                               "openjdk-17-jre-headless", "-version")
            major = re.search(r'version "(\d+)', java)
            if major is None or int(major.group(1)) < 17:
                pytest.fail(f"pyspark needs Java 17 or later; JAVA_HOME has {java}")
        env.setenv("PYSPARK_PYTHON", sys.executable)  # workers that have ligeiro
        session = (
            SparkSession.builder.master("local[2]")
            .appName("ligeiro tests")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.log.level", "ERROR")
            # Short jobs: the C1 compiler alone warms up faster on 2 cores.
            .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
            .getOrCreate()
        )
        yield session
        session.stop()


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    """sklearn's 150 iris flowers, shuffled, each with an id; 600 rows."""
    data = np.tile(load_iris().data, (4, 1))
    data = data[np.random.default_rng(8).permutation(len(data))]
    columns = {"id": np.arange(len(data), dtype=np.int64)}
    return pa.table(columns | {name: data[:, j] for j, name in enumerate(FEATURES)})


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory: pytest.TempPathFactory, rows: pa.Table) -> Path:
    """The rows as three Parquet files in one directory."""
    folder = tmp_path_factory.mktemp("spark") / "in"
    folder.mkdir()
    for i, start in enumerate(range(0, rows.num_rows, 200)):
        pq.write_table(rows.slice(start, 200), folder / f"part-{i}.parquet")
    return folder


def by_id(table: pa.Table) -> pa.Table:
    return table.sort_by("id")


def assert_same_predictions(actual: pa.Table, expected: pa.Table) -> None:
    """Labels identical, probabilities within 1e-6, row for row (ordered by id)."""
    actual, expected = by_id(actual), by_id(expected)
    assert actual.column("id").to_pylist() == expected.column("id").to_pylist()
    assert actual.column("label").to_pylist() == expected.column("label").to_pylist()
    assert (
        actual.column("label_name").cast(pa.string()).to_pylist()
        == expected.column("label_name").cast(pa.string()).to_pylist()
    )
    for name in PROBABILITIES:
        np.testing.assert_allclose(
            actual.column(name).to_numpy(), expected.column(name).to_numpy(), rtol=0, atol=1e-6
        )


def in_process(examples: Path, rows: pa.Table) -> pa.Table:
    """The model's own predictions through ligeiro's Engine."""
    x = np.column_stack([rows.column(n).to_numpy() for n in FEATURES]).astype(np.float32)
    with Engine.from_repository(examples) as engine:
        result = engine.infer("iris", {"float_input": x})
    label = result["output_label"].astype(np.int64)
    columns = {"id": rows.column("id"), "label": label, "label_name": np.array(LABELS)[label]}
    probabilities = result["output_probability"]
    return pa.table(columns | {n: probabilities[:, j] for j, n in enumerate(PROBABILITIES)})


def ligeiro_score(examples: Path, source: Path, output: Path) -> pa.Table:
    score_files(examples / "iris", source, output, ScoreOptions(keep=["id"]))
    return pq.read_table(output)


def test_batch_job_equals_ligeiro_score_and_the_engine(
    spark: SparkSession, examples: Path, parquet_dir: Path, rows: pa.Table, tmp_path: Path
) -> None:
    scored = score(spark.read.parquet(str(parquet_dir)), examples / "iris", keep=["id"])
    assert scored.columns == ["id", "label", "label_name", *PROBABILITIES]
    actual = scored.toArrow()
    assert actual.num_rows == rows.num_rows
    assert_same_predictions(actual, ligeiro_score(examples, parquet_dir, tmp_path / "out.parquet"))
    assert_same_predictions(actual, in_process(examples, rows))


def test_all_columns_are_kept_by_default(
    spark: SparkSession, examples: Path, parquet_dir: Path
) -> None:
    scored = score(spark.read.parquet(str(parquet_dir)), examples / "iris" / "1")
    assert scored.columns == ["id", *FEATURES, "label", "label_name", *PROBABILITIES]


def test_a_flat_model_folder_scores_as_its_version_1(
    spark: SparkSession, examples: Path, parquet_dir: Path, rows: pa.Table, tmp_path: Path
) -> None:
    """model.onnx and config.toml side by side: the workers get them as version 1's."""
    flat = tmp_path / "flat-iris"
    flat.mkdir()
    shutil.copy(examples / "iris" / "config.toml", flat / "config.toml")
    for file in (examples / "iris" / "1").iterdir():
        shutil.copy(file, flat / file.name)
    actual = score(spark.read.parquet(str(parquet_dir)), flat, keep=["id"]).toArrow()
    assert_same_predictions(actual, in_process(examples, rows))


def test_streaming_job_equals_ligeiro_score_and_the_engine(
    spark: SparkSession, examples: Path, parquet_dir: Path, rows: pa.Table, tmp_path: Path
) -> None:
    schema = spark.read.parquet(str(parquet_dir)).schema
    # One file per micro-batch: three batches through the same worker sessions.
    stream = spark.readStream.schema(schema).option("maxFilesPerTrigger", 1)
    scored = score(stream.parquet(str(parquet_dir)), examples / "iris", keep=["id"])
    assert scored.isStreaming
    output = tmp_path / "stream-out"
    query = (
        scored.writeStream.format("parquet")
        .option("path", str(output))
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(timeout=90)
    assert query.exception() is None
    assert len(query.recentProgress) == 3
    actual = pq.read_table(output)
    assert actual.num_rows == rows.num_rows
    assert_same_predictions(actual, ligeiro_score(examples, parquet_dir, tmp_path / "out.parquet"))
    assert_same_predictions(actual, in_process(examples, rows))


def write_csv(rows: pa.Table, path: Path, bad_row: int | None = None) -> Path:
    pcsv.write_csv(rows, path, pcsv.WriteOptions(quoting_style="none"))
    if bad_row is not None:  # the row's last field (petal_width) becomes text
        lines = path.read_text().splitlines()
        lines[bad_row] = lines[bad_row].rsplit(",", 1)[0] + ",abc"
        path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_engine_spark_equals_the_builtin_engine(
    spark: SparkSession,
    examples: Path,
    rows: pa.Table,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_csv(rows, tmp_path / "in.csv")
    model = str(examples / "iris")
    main(["score", model, str(source), "-o", str(tmp_path / "builtin.parquet"), "--keep", "id"])
    main(["score", model, str(source), "-o", str(tmp_path / "spark.parquet"), "--keep", "id",
          "--engine", "spark", "--master", "local[2]", "--batch-rows", "100"])  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"scored 600 rows from 1 file into {tmp_path / 'spark.parquet'} in ")
    assert (tmp_path / "spark.parquet").is_dir()  # Spark's part files
    actual, expected = (
        pq.read_table(tmp_path / name) for name in ("spark.parquet", "builtin.parquet")
    )
    assert actual.column("id").type == pa.string()  # CSV columns are text, as in ligeiro score
    actual, expected = (numbered(table) for table in (actual, expected))
    assert_same_predictions(actual, expected)
    assert_same_predictions(actual, in_process(examples, rows))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "builtin.parquet",
        "in.csv",
        "spark.parquet",
    ]


def numbered(table: pa.Table) -> pa.Table:
    """Ids read from CSV (text) as numbers, so that they sort as the rows' order."""
    return table.set_column(0, "id", table.column("id").cast(pa.int64()))


def test_cli_bad_row_exits_2_with_one_line_and_writes_nothing(
    spark: SparkSession,
    examples: Path,
    rows: pa.Table,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_csv(rows, tmp_path / "in.csv", bad_row=7)
    assert cli_error(examples, source, tmp_path / "out.csv", ["--engine", "spark"], capsys) == (
        f"error: {source} (Spark partition 0): row 7, column 'petal_width': "
        f"expected a number (float), got 'abc'\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_a_bad_row_fails_the_dataframe_with_its_place(
    spark: SparkSession, examples: Path, rows: pa.Table, tmp_path: Path
) -> None:
    source = write_csv(rows.slice(0, 20), tmp_path / "in.csv", bad_row=12)
    df = spark.read.option("header", "true").csv(str(source))
    scored = score(df, examples / "iris", keep=["id"])
    with pytest.raises(PythonException, match=r"InvalidInputError: Spark partition 0: row 12, "
                       r"column 'petal_width': expected a number \(float\), got 'abc'"):  # fmt: skip
        scored.collect()


def test_a_missing_column_fails_at_once(
    spark: SparkSession, examples: Path, parquet_dir: Path
) -> None:
    df = spark.read.parquet(str(parquet_dir)).drop("petal_width")
    with pytest.raises(InvalidInputError, match="DataFrame: missing column 'petal_width'; it has"):
        score(df, examples / "iris")


@pytest.mark.parametrize("line", ["2,6.7,3.0", "2,6.7,3.0,5.2,2.3,9"])
def test_a_ragged_csv_fails_the_run(
    spark: SparkSession,
    examples: Path,
    tmp_path: Path,
    line: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id," + ",".join(FEATURES) + f"\n1,5.1,3.5,1.4,0.2\n{line}\n")
    output = tmp_path / "out.parquet"
    assert cli_error(examples, source, output, ["--engine", "spark"], capsys) == (
        f"error: Spark: [FAILED_READ_FILE.NO_HINT] Encountered error while reading file "
        f"file://{source}. (caused by [MALFORMED_CSV_RECORD] Malformed CSV record: {line})\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--engine", "spark", "--workers", "2"], "do not apply to --engine spark"),
        (["--engine", "spark", "--on-error", "reject", "--rejects", "r.csv"], "do not apply"),
        (["--master", "local[2]"], "--master and --conf need --engine spark"),
    ],
)
def test_options_that_do_not_apply(
    tmp_path: Path,
    examples: Path,
    options: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    assert message in cli_error(examples, source, output, options, capsys)


def cli_error(
    examples: Path,
    source: Path,
    output: Path,
    options: list[str],
    capsys: pytest.CaptureFixture[str],
) -> str:
    """What ``ligeiro score`` prints on stderr when it exits 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(examples / "iris"), str(source), "-o", str(output), *options])
    assert exit_info.value.code == 2
    return capsys.readouterr().err
