"""``ligeiro optimize`` measured: graph, int8 and fp16 against the original, on one core.

Run with ``python -m benchmarks.bench_optimize`` (about 4 minutes). Two models:

- ``mlp``: the example MLPClassifier (64 -> 2048 -> 2048 -> 10, 17 MB), sample: the
  first 64 rows of scikit-learn's digits;
- ``wide``: a generated float32 MatMul MLP (256 -> 4096 -> 4096 -> 16, 72 MB,
  ``_models.build_mlp``), sample: ``optimize_model``'s generated 64 rows.

Each mode runs through ``optimize_model`` itself (tolerance wide open, so every candidate
is written and reported) on a copy of the model in a temporary repository; latency is
the median of ``--runs`` runs at batch 1 and 64, one intra-op thread, the process pinned
to one core. Then an int8 sweep (weight type, per-channel, reduce_range) quantizes each
model directly with ``quantize_dynamic`` and times it the same way: the numbers behind
the defaults in docs/adr/0006-optimize.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._harness import (
    MODELS,
    ROOT,
    SERVER_CORE,
    exclusive_machine,
    format_table,
    machine_info,
)
from benchmarks._models import WIDE_WIDTHS, build_mlp



def _mlp_sample() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data[:64].astype(np.float32)


def _models(work: Path) -> dict[str, tuple[Path, np.ndarray | None]]:
    if not (MODELS / "mlp" / "1" / "model.onnx").is_file():
        sys.path.insert(0, str(ROOT))
        from tests.conftest import build_examples

        build_examples()
    shutil.copytree(MODELS / "mlp", work / "mlp")
    build_mlp(work / "wide" / "1" / "model.onnx", WIDE_WIDTHS, graph_name="wide")
    return {"mlp": (work / "mlp", _mlp_sample()), "wide": (work / "wide", None)}


def _modes(folder: Path, sample: np.ndarray | None, runs: int) -> list[dict[str, object]]:
    from ligeiro.convert.optimize import optimize_model

    rows = []
    for mode in ("graph", "int8", "fp16"):
        prefix = f"  {folder.name} {mode}: "
        started = time.perf_counter()
        result = optimize_model(
            folder,
            version="1",
            mode=mode,  # type: ignore[arg-type]
            sample=sample,
            tolerance=1e9,
            min_agreement=0.0,
            runs=runs,
            progress=lambda line, prefix=prefix: print(prefix + line, flush=True),
        )
        print(result.table(), flush=True)
        rows.append({**result.to_dict(), "optimize_s": time.perf_counter() - started})
    return rows


def _p50_ms(runtime: object, feeds: dict[str, np.ndarray], runs: int) -> float:
    names = [spec.name for spec in runtime.outputs]  # type: ignore[attr-defined]
    for _ in range(5):
        runtime.run(feeds, names)  # type: ignore[attr-defined]
    timings = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        runtime.run(feeds, names)  # type: ignore[attr-defined]
        timings.append(time.perf_counter_ns() - start)
    return statistics.median(timings) / 1e6


def _sweep(folder: Path, sample: np.ndarray | None, runs: int) -> list[dict[str, object]]:
    """int8 settings side by side, on the same sample, each against the float model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ligeiro.convert.fidelity import compare
    from ligeiro.runtime.onnx import OnnxRuntime

    # quantize_dynamic asks on the root logger, on every call, for pre-processing.
    logging.getLogger().setLevel(logging.ERROR)
    source = folder / "1" / "model.onnx"
    reference = OnnxRuntime(source)
    (spec,) = reference.inputs
    x = (
        sample
        if sample is not None
        else np.random.default_rng(0).standard_normal((64, spec.shape[1])).astype(np.float32)
    )
    names = [s.name for s in reference.outputs]
    expected = dict(zip(names, reference.run({spec.name: x}, names), strict=True))
    base = {n: _p50_ms(reference, {spec.name: x[:n]}, runs) for n in (1, 64)}
    rows: list[dict[str, object]] = [
        {"settings": "float32 (reference)", "p50_b1_ms": base[1], "p50_b64_ms": base[64]}
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        for weight, per_channel, reduce_range in itertools.product(
            ("QInt8", "QUInt8"), (False, True), (False, True)
        ):
            quantize_dynamic(
                str(source), str(out), op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType[weight],
                extra_options={"DefaultTensorType": 1},
            )  # fmt: skip
            candidate = OnnxRuntime(out)
            got = dict(zip(names, candidate.run({spec.name: x}, names), strict=True))
            fidelity = compare(expected, got, tolerance=1e9, labels=frozenset({"output_label"}))
            values = [d for d in fidelity.outputs if d.kind == "values"]
            labels = [d for d in fidelity.outputs if d.kind == "label"]
            rows.append(
                {
                    "settings": f"{weight} per_channel={per_channel} reduce_range={reduce_range}",
                    "p50_b1_ms": _p50_ms(candidate, {spec.name: x[:1]}, runs),
                    "p50_b64_ms": _p50_ms(candidate, {spec.name: x[:64]}, runs),
                    "max_abs_diff": max(d.max_abs_diff for d in values),
                    "label_agreement": labels[0].agreement if labels else None,
                }
            )
            candidate.close()
    reference.close()
    return rows


def _timing(entry: dict[str, float], digits: int) -> str:
    return (
        f"{entry['before_ms']:.{digits}f} -> {entry['after_ms']:.{digits}f} ms "
        f"({entry['speedup']:.2f}x)"
    )


Table = tuple[list[str], list[list[str]]]


def _mode_table(name: str, rows: list[dict[str, object]]) -> Table:
    table = []
    for row in rows:
        lat = {entry["rows"]: entry for entry in row["latencies"]}  # type: ignore[attr-defined]
        fidelity = row["fidelity"]
        values = [d for d in fidelity["outputs"] if d["kind"] == "values"]  # type: ignore[index]
        labels = [d for d in fidelity["outputs"] if d["kind"] == "label"]  # type: ignore[index]
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items() if k != "op_types")  # type: ignore[attr-defined]
        table.append(
            [
                f"{name} {row['mode']}",
                settings,
                f"{row['size_before'] / 1e6:.1f} -> {row['size_after'] / 1e6:.1f} MB",  # type: ignore[operator]
                _timing(lat[1], 3),
                _timing(lat[64], 2),
                f"{max(d['max_abs_diff'] for d in values):.3g}" if values else "-",
                f"{min(d['agreement'] for d in labels):.2%}" if labels else "-",
                f"{row['optimize_s']:.1f} s",
            ]
        )
    headers = ["model/mode", "settings", "size", "p50 batch 1", "p50 batch 64", "max |diff|"]
    return [*headers, "labels agree", "took"], table


def _sweep_table(name: str, rows: list[dict[str, object]]) -> Table:
    return (
        [f"{name} int8 settings", "p50 batch 1", "p50 batch 64", "max |diff|", "labels agree"],
        [
            [
                row["settings"],
                f"{row['p50_b1_ms']:.3f} ms",
                f"{row['p50_b64_ms']:.2f} ms",
                f"{row['max_abs_diff']:.3g}" if "max_abs_diff" in row else "-",
                f"{row['label_agreement']:.2%}" if row.get("label_agreement") is not None else "-",
            ]
            for row in rows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_optimize", description=__doc__
    )
    parser.add_argument("--runs", type=int, default=50, help="timed runs per batch size and model")
    parser.add_argument("--models", default="mlp,wide", help="comma-separated: mlp, wide")
    parser.add_argument("--no-sweep", action="store_true", help="skip the int8 settings sweep")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.bench_optimize " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    with exclusive_machine(), tempfile.TemporaryDirectory() as tmp:
        # One core for the whole process: ORT's single intra-op thread and the timing loop.
        os.sched_setaffinity(0, {SERVER_CORE})
        machine = machine_info(["onnxruntime", "onnx", "numpy"])
        models = _models(Path(tmp))
        wanted = [m for m in args.models.split(",") if m]
        report: dict[str, object] = {
            "machine": machine.__dict__,
            "command": command,
            "runs": args.runs,
        }
        sections: list[Table] = []
        for name in wanted:
            folder, sample = models[name]
            modes = _modes(folder, sample, args.runs)
            report[f"{name}_modes"] = modes
            sections.append(_mode_table(name, modes))
            if not args.no_sweep:
                sweep = _sweep(folder, sample, args.runs)
                report[f"{name}_int8_sweep"] = sweep
                sections.append(_sweep_table(name, sweep))
    header = (
        f"{machine.summary()}, {machine.date}.\nCommand: `{command}`; median of {args.runs} "
        f"runs per batch size, 1 intra-op thread, pinned to core {SERVER_CORE}."
    )
    text = "\n\n".join(format_table(*table, markdown=False) for table in sections)
    print(f"\n{header}\n\n{text}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.markdown:
        tables = "\n\n".join(format_table(*table, markdown=True) for table in sections)
        args.markdown.write_text(f"{header}\n\n{tables}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
