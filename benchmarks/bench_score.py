"""Batch scoring: ``ligeiro score`` against pandas + the scikit-learn pickle, on Parquet.

Issue 8's benchmark. N iris rows (default 10 million) are generated into a Parquet file
(seeded: each row drawn from one class's mean and covariance in scikit-learn's bundled
iris, so the model sees realistic flowers) and scored, with an ``id`` column passed
through, by:

- **pandas + sklearn**: what a team does today: ``ParquetFile.iter_batches`` → pandas →
  the fitted pipeline's ``predict_proba`` → label names → ``ParquetWriter``, in chunks of
  ``--batch-rows`` (the same as ligeiro's), pinned to one core;
- **ligeiro score, 1 worker**: pinned to one core (``--threads 1``);
- **ligeiro score, 2 workers**: on cores 0-1 (the reader/writer process and two workers);
- **ligeiro on Spark local[2]**: ``ligeiro score --engine spark --master local[2]`` on
  cores 0-1 (``ligeiro.spark`` through ``mapInArrow``; output a directory of part files).

Each runs as its own process; rows/s is rows over its whole wall time (start-up
included: for Spark, the JVM's too), and peak RSS is the sum of every process's
high-water mark in its tree (sampled from /proc every 50 ms, so a forked worker cannot
hide its memory). For Spark the tree is the Python driver, Spark's JVM (driver and
local executor in one) and the Python workers that the JVM forks; the JVM's part is
shown apart. Before
any number is reported the outputs are compared: labels must be equal on every row and
probabilities within 1e-5 (the ONNX graph runs in float32, scikit-learn in float64).

Run: ``python -m benchmarks.bench_score [--rows 10000000] [--markdown PATH] [--json PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import numpy as np

from ._harness import (
    MODELS,
    ROOT,
    WORK_DIR,
    exclusive_machine,
    format_table,
    machine_info,
    write_report,
)
from ._iris import PICKLE, ensure_models
from ._procfs import process_tree

WORK: Final = WORK_DIR / "score"
FEATURES: Final = ("sepal_length", "sepal_width", "petal_length", "petal_width")
LABELS: Final = ("iris-setosa", "iris-versicolor", "iris-virginica")
SEED: Final = 8
GENERATE_ROWS: Final = 1 << 20  # rows generated (and written as a row group) at a time
PACKAGES: Final = (
    "ligeiro", "onnxruntime", "numpy", "pyarrow", "pandas", "scikit-learn", "pyspark"
)  # fmt: skip
# Java for pyspark, found by `make bench` (scripts/fetch_java.sh) when none is on PATH.
JAVA_HOME_FILE: Final = ROOT / ".venv" / "java" / "JAVA_HOME"
TARGET_RATIO: Final = 3.0
TARGET_RSS_MIB: Final = 500


def generate(rows: int) -> Path:
    """The seeded iris Parquet file of ``rows`` rows, written once and reused."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_iris

    path = WORK / f"iris-{rows}-seed{SEED}.parquet"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    iris = load_iris()
    classes = [iris.data[iris.target == k] for k in range(3)]
    means = [c.mean(axis=0) for c in classes]
    covariances = [np.cov(c, rowvar=False) for c in classes]
    rng = np.random.default_rng(SEED)
    temp = path.with_suffix(".tmp")
    print(f"generating {rows:,} rows into {path}", flush=True)
    with pq.ParquetWriter(temp, _data_schema()) as writer:
        for start in range(0, rows, GENERATE_ROWS):
            n = min(GENERATE_ROWS, rows - start)
            kind = rng.integers(0, 3, n)
            data = np.empty((n, 4))
            for k in range(3):
                chosen = kind == k
                data[chosen] = rng.multivariate_normal(means[k], covariances[k], chosen.sum())
            columns = {"id": np.arange(start, start + n, dtype=np.int64)}
            columns |= {name: data[:, j].round(1) for j, name in enumerate(FEATURES)}
            writer.write_table(pa.table(columns))
    temp.rename(path)
    return path


def _data_schema() -> object:
    import pyarrow as pa

    return pa.schema([("id", pa.int64())] + [(f, pa.float64()) for f in FEATURES])


def baseline(source: Path, output: Path, batch_rows: int) -> None:
    """pandas + the sklearn pickle, in chunks: the comparison's (a)."""
    import joblib
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = joblib.load(PICKLE)
    names = np.asarray(LABELS, dtype=object)
    writer = None
    with pq.ParquetFile(source) as handle:
        for batch in handle.iter_batches(batch_size=batch_rows):
            frame = batch.to_pandas()
            x = frame[list(FEATURES)]
            probabilities = model.predict_proba(
                x if hasattr(model, "feature_names_in_") else x.to_numpy()
            )
            label = probabilities.argmax(axis=1)
            out = frame[["id"]].copy()
            out["label"] = label
            out["label_name"] = names[label]
            for j, name in enumerate(LABELS):
                out[f"probability_{name}"] = probabilities[:, j]
            table = pa.Table.from_pandas(out, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(output, table.schema)
            writer.write_table(table)
    if writer is not None:
        writer.close()


@dataclass(frozen=True)
class Result:
    name: str
    cores: str
    seconds: float
    rows_per_s: float
    peak_rss_mib: float
    jvm_rss_mib: float = 0.0  # of peak_rss_mib, Spark's JVM


def _rss_bytes(root: int) -> tuple[int, int]:
    """The high-water resident sets (VmHWM) of ``root``'s live tree: all, and java's."""
    total = jvm = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            fields = dict(line.split(":", 1) for line in status if ":" in line)
            kib = int(fields.get("VmHWM", "0 kB").split()[0])
            total += kib
            jvm += kib if fields["Name"].strip() == "java" else 0
    return total * 1024, jvm * 1024


def run(name: str, cores: str, argv: list[str], rows: int) -> Result:
    """Run ``argv`` pinned to ``cores``; its wall time and its tree's peak memory."""
    command = ["taskset", "-c", cores, *argv]
    print(f"{name}: {' '.join(command)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if "JAVA_HOME" not in env and JAVA_HOME_FILE.is_file():
        env["JAVA_HOME"] = JAVA_HOME_FILE.read_text().strip()
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    peak = jvm = 0
    while True:
        # wait4 reaps it with its own rusage (not the maximum over every child this
        # process ever had, which RUSAGE_CHILDREN would give).
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        total, java = _rss_bytes(process.pid)
        peak, jvm = max(peak, total), max(jvm, java)
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {process.returncode}")
    # Its own peak (kilobytes on Linux), in case it grew after the last sample.
    peak = max(peak, usage.ru_maxrss * 1024)
    return Result(name, cores, seconds, rows / seconds, peak / 2**20, jvm / 2**20)


def check(reference: Path, candidate: Path) -> None:
    """Labels equal on every row and probabilities within 1e-5, or the run stops.

    ``candidate`` may be a directory of part files (Spark's), compared in id order.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    # One column at a time (80 MB each at 10M rows): the two files' row groups differ.
    rows = pq.ParquetFile(reference).metadata.num_rows
    order = pc.sort_indices(pq.read_table(candidate, columns=["id"]).column(0))
    if len(order) != rows:
        raise SystemExit(f"{candidate}: not {rows:,} rows like {reference}")

    def read(path: Path, column: str) -> object:
        values = pq.read_table(path, columns=[column]).column(0)
        if pa.types.is_dictionary(values.type):  # ligeiro's label_name; Spark's is plain
            values = values.cast(values.type.value_type)
        return values.take(order) if path == candidate else values

    for column in ("id", "label", "label_name"):
        expected = read(reference, column)
        if not expected.equals(read(candidate, column).cast(expected.type)):
            raise SystemExit(f"{candidate}: column {column} differs from {reference}")
    for name in LABELS:
        column = f"probability_{name}"
        left, right = (read(p, column).to_numpy() for p in (reference, candidate))
        diff = np.abs(left - right).max()
        if diff > 1e-5:
            raise SystemExit(f"{candidate}: {column} differs by {diff:.3g}")
    print(f"{candidate.name}: {rows:,} rows agree with {reference.name}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows to score")
    parser.add_argument("--batch-rows", type=int, default=65536, help="rows per chunk")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--baseline-run", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_run:  # the baseline's own process, started by run()
        baseline(*args.baseline_run, args.batch_rows)
        return 0
    with exclusive_machine():
        ensure_models()
        source = generate(args.rows)
        model = str(MODELS / "iris")
        python = [sys.executable]
        names = ("pandas", "ligeiro-1", "ligeiro-2", "spark")
        outputs = {name: WORK / f"out-{name}.parquet" for name in names}
        batch = ["--batch-rows", str(args.batch_rows)]
        score = [*python, "-m", "ligeiro", "score", model, str(source), "--keep", "id", *batch]
        results = [
            run("pandas + sklearn", "0", [*python, "-m", "benchmarks.bench_score",
                "--baseline-run", str(source), str(outputs["pandas"]), *batch], args.rows),
            run("ligeiro score, 1 worker", "0",
                [*score, "-o", str(outputs["ligeiro-1"]), "--workers", "1"], args.rows),
            run("ligeiro score, 2 workers", "0-1",
                [*score, "-o", str(outputs["ligeiro-2"]), "--workers", "2"], args.rows),
            run("ligeiro on Spark local[2]", "0-1",
                [*score, "-o", str(outputs["spark"]), "--engine", "spark",
                 "--master", "local[2]", "--conf", "spark.ui.enabled=false"], args.rows),
        ]  # fmt: skip
        check(outputs["pandas"], outputs["ligeiro-1"])
        check(outputs["ligeiro-1"], outputs["ligeiro-2"])
        check(outputs["ligeiro-1"], outputs["spark"])
        for path in outputs.values():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    base = results[0].rows_per_s
    headers = ["scorer", "cores", "seconds", "rows/s", "vs pandas", "peak RSS (MiB)", "of it JVM"]
    rows = [
        [r.name, r.cores, f"{r.seconds:.2f}", f"{r.rows_per_s:,.0f}",
         f"{r.rows_per_s / base:.2f}", f"{r.peak_rss_mib:.0f}",
         f"{r.jvm_rss_mib:.0f}" if r.jvm_rss_mib else "-"]
        for r in results
    ]  # fmt: skip
    one = results[1]
    passed = one.rows_per_s >= TARGET_RATIO * base and one.peak_rss_mib <= TARGET_RSS_MIB
    try:
        machine = machine_info(PACKAGES).summary()
    except OSError:  # machine_info asks wrk for its version; this benchmark needs no wrk
        machine = f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    verdict = (
        f"acceptance (1 worker ≥ {TARGET_RATIO:g}x pandas rows/s, RSS ≤ {TARGET_RSS_MIB} MiB): "
        f"{'pass' if passed else 'FAIL'} ({one.rows_per_s / base:.2f}x, {one.peak_rss_mib:.0f} MiB)"
    )
    command = "python -m benchmarks.bench_score " + " ".join(sys.argv[1:] if argv is None else argv)
    print(format_table(headers, rows, markdown=False))
    print(verdict)
    if args.markdown:
        text = (
            f"### Batch scoring, {args.rows:,} iris rows (Parquet)\n\n{machine}\n\n"
            f"`{command.strip()}`\n\n{format_table(headers, rows, markdown=True)}\n\n{verdict}\n"
        )
        write_report(args.markdown, text)
    if args.json:
        document = {
            "rows": args.rows,
            "batch_rows": args.batch_rows,
            "machine": machine,
            "command": command.strip(),
            "results": [asdict(r) for r in results],
            "passed": passed,
        }
        write_report(args.json, json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
