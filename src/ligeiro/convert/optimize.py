"""``ligeiro optimize``: a faster version of an ONNX model, written only if it answers the same.

Three modes, each producing a candidate from ``<folder>/<version>/model.onnx``:

- ``graph``: ONNX Runtime's graph optimizations up to ``ORT_ENABLE_EXTENDED``, saved
  offline (constant folding, node eliminations, MatMul + Add and activation fusions).
  Not ``ORT_ENABLE_ALL``: its layout transformations are specific to the CPU that ran
  them (docs/adr/0006-optimize.md); the server still applies them when it loads.
- ``int8``: dynamic quantization of MatMul and Gemm weights
  (``onnxruntime.quantization.quantize_dynamic``), after ORT's pre-processing.
- ``fp16``: float32 weights and compute in float16, inputs and outputs kept float32
  (ONNX Runtime's own ``convert_float_to_float16``, ``keep_io_types=True``).

The candidate and the reference run on the same sample; their outputs are compared with
:func:`ligeiro.convert.fidelity.compare`, their latencies (median of ``runs`` runs) at
batch 1 and on the whole sample. Only a candidate within tolerance is written, as the
next version with its report beside it (``optimize.json``). The sample is made in
``_optimize_sample.py``, the candidates in ``_optimize_candidates.py``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, final

from ..errors import ConversionError, InvalidInputError, ModelLoadError, ModelNotFoundError
from ..repository.layout import MODEL_FILE
from ..runtime.onnx import OnnxRuntime
from ._optimize_candidates import (
    INT8_OPS,
    INT8_PER_CHANNEL_AUTO,
    INT8_WEIGHT_TYPE,
    optimize_graph,
    preprocess,
    quantize,
    to_fp16,
)
from ._optimize_sample import label_outputs, sample_feeds
from .fidelity import Fidelity, OutputDelta, compare

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import numpy as np

__all__ = [
    "REPORT_FILE",
    "Latency",
    "Mode",
    "OptimizationError",
    "OptimizationResult",
    "optimize_model",
]

logger = logging.getLogger(__name__)

Mode = Literal["graph", "int8", "fp16"]
MODES: tuple[Mode, ...] = ("graph", "int8", "fp16")
REPORT_FILE = "optimize.json"
WARMUP_RUNS = 5
# Reference and candidate are timed in alternating blocks, so a noisy stretch of a
# shared machine lands on both rather than on one.
_BLOCKS = 5


class OptimizationError(ConversionError):
    """The optimized model is not within tolerance, or cannot be made; nothing is written.

    The message is one line; ``result`` holds the full report (fidelity, latencies;
    ``result.table()`` for the terminal) when the candidate ran.
    """

    def __init__(self, message: str, result: OptimizationResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True, slots=True)
class Latency:
    """Median latency of one run of the model, before and after, at ``rows`` rows."""

    rows: int
    before_ms: float
    after_ms: float

    @property
    def speedup(self) -> float:
        return self.before_ms / self.after_ms if self.after_ms > 0 else math.inf


@final
@dataclass(frozen=True, slots=True)
class OptimizationResult:
    """What ``optimize_model`` did: the candidate's sizes, latencies and fidelity.

    Attributes:
        model: the model folder's name.
        mode: ``graph``, ``int8`` or ``fp16``.
        source_version: the version optimized.
        version: the version written, or ``None`` when the candidate failed.
        size_before, size_after: ``model.onnx`` bytes.
        latencies: per batch size, median ms of the reference and the candidate.
        fidelity: the candidate's outputs against the reference's.
        settings: how the candidate was made (quantization parameters, level).
        sample: where the sample came from.
        threads, runs: intra-op threads of both sessions; timed runs per batch size.
        notes: what the reader should know (fallbacks, skipped steps).
    """

    model: str
    mode: str
    source_version: int
    version: int | None
    size_before: int
    size_after: int
    latencies: list[Latency]
    fidelity: Fidelity
    settings: dict[str, Any]
    sample: str
    threads: int
    runs: int
    onnxruntime: str
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.fidelity.passed

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latencies"] = [
            {**asdict(latency), "speedup": latency.speedup} for latency in self.latencies
        ]
        data["passed"] = self.passed
        return data

    def save(self, path: Path) -> None:
        """Write the report as JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> str:
        """The report for the terminal: sizes, latencies, then the fidelity table."""
        target = f"version {self.version}" if self.version is not None else "nothing written"
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        lines = [
            f"{self.model} version {self.source_version}, {self.mode} ({settings}) -> {target}",
            f"sample: {self.sample}; {self.threads} thread(s), median of {self.runs} runs",
            "",
            f"{'':<14} {'before':>12} {'after':>12} {'ratio':>8}",
            f"{'size':<14} {_megabytes(self.size_before):>12} {_megabytes(self.size_after):>12} "
            f"{self.size_after / max(1, self.size_before):>7.2f}x",
        ]
        lines += [
            f"{f'p50 batch {latency.rows}':<14} {latency.before_ms:>9.3f} ms "
            f"{latency.after_ms:>9.3f} ms {latency.speedup:>7.2f}x faster"
            for latency in self.latencies
        ]
        lines += ["", self.fidelity.table()]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 10_000 else f"{size} B"


def _versions(folder: Path) -> list[int]:
    return sorted(
        int(child.name)
        for child in folder.iterdir()
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0
    )


def _source(folder: Path, version: str | None) -> tuple[int, Path]:
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: model folder not found (expected a directory)")
    versions = _versions(folder)
    if version is None:
        if not versions:
            raise ModelNotFoundError(f"{folder}: no version folder (expected {folder}/1/)")
        chosen = versions[-1]
    elif not version.isdigit() or int(version) not in versions:
        raise ModelNotFoundError(
            f"{folder}: no version {version!r}; versions: {', '.join(map(str, versions)) or 'none'}"
        )
    else:
        chosen = int(version)
    path = folder / str(chosen) / MODEL_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path}: file not found")
    return chosen, path


# --- measuring ----------------------------------------------------------------------------


def _outputs(runtime: OnnxRuntime, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [spec.name for spec in runtime.outputs]
    return dict(zip(names, runtime.run(feeds, names), strict=True))


def _latencies(
    reference: OnnxRuntime,
    candidate: OnnxRuntime,
    feeds: Mapping[str, np.ndarray],
    runs: int,
    batchable: bool,
    progress: Callable[[str], None],
) -> list[Latency]:
    rows = next(iter(feeds.values())).shape[0]
    sizes = [1, rows] if batchable and rows > 1 else [rows]
    names = [spec.name for spec in reference.outputs]
    result = []
    for size in sizes:
        batch = {name: array[:size] for name, array in feeds.items()} if batchable else feeds
        progress(f"timing batch {size}: {runs} runs each of the reference and the candidate")
        timings: dict[int, list[int]] = {0: [], 1: []}
        for runtime in (reference, candidate):
            for _ in range(WARMUP_RUNS):
                runtime.run(batch, names)
        block = max(1, math.ceil(runs / _BLOCKS))
        while len(timings[1]) < runs:
            for index, runtime in enumerate((reference, candidate)):
                for _ in range(min(block, runs - len(timings[index]))):
                    start = time.perf_counter_ns()
                    runtime.run(batch, names)
                    timings[index].append(time.perf_counter_ns() - start)
        result.append(
            Latency(size, statistics.median(timings[0]) / 1e6, statistics.median(timings[1]) / 1e6)
        )
    return result


def _judge(fidelity: Fidelity, min_agreement: float) -> Fidelity:
    """Apply ``min_agreement`` to labels; ``compare`` itself allows no flipped label."""
    if min_agreement >= 1.0:
        return fidelity
    passed = all(
        delta.agreement >= min_agreement
        if delta.kind == "label"
        else delta.max_abs_diff <= fidelity.tolerance
        for delta in fidelity.outputs
    )
    note = f"labels must agree on at least {min_agreement:.2%} of rows"
    return replace(fidelity, passed=passed, notes=[*fidelity.notes, note])


def _failure(result: OptimizationResult, min_agreement: float) -> str:
    problems = []
    for delta in result.fidelity.outputs:
        if delta.kind == "label" and delta.agreement < min_agreement:
            problems.append(
                f"{delta.name!r} labels agree on {delta.agreement:.2%} of rows "
                f"({delta.disagreements} differ; at least {min_agreement:.2%} must agree)"
            )
        elif delta.kind == "values" and delta.max_abs_diff > result.fidelity.tolerance:
            problems.append(
                f"{delta.name!r} max |diff| {delta.max_abs_diff:.4g} "
                f"> {result.fidelity.tolerance:g}"
            )
    return (
        f"{result.model} version {result.source_version}: the {result.mode} model is outside "
        f"tolerance: {'; '.join(problems)}; nothing written"
    )


def _write(folder: Path, work: Path) -> int:
    """Rename ``work`` to the next free version number; return that number."""
    while True:
        version = max(_versions(folder), default=0) + 1
        try:
            # A hidden folder renamed in one step: the server's watcher never sees a
            # version folder without its model.
            work.rename(folder / str(version))
        except OSError:
            if (folder / str(version)).exists():  # another writer took it; try the next
                continue
            raise
        return version


def optimize_model(
    folder: Path,
    *,
    mode: Mode,
    tolerance: float,
    version: str | None = None,
    sample: np.ndarray | Mapping[str, np.ndarray] | Path | None = None,
    labels: frozenset[str] | None = None,
    threads: int = 1,
    runs: int = 50,
    per_channel: bool | None = None,
    min_agreement: float = 1.0,
    progress: Callable[[str], None] | None = None,
) -> OptimizationResult:
    """Optimize a model version; write it as the next version if its outputs stay close.

    Args:
        folder: the model's folder (``<folder>/<version>/model.onnx``).
        mode: ``"graph"`` (ORT graph optimizations saved offline), ``"int8"`` (dynamic
            quantization of MatMul/Gemm weights) or ``"fp16"`` (float16 inside, float32
            inputs and outputs).
        tolerance: the largest absolute difference allowed on any non-label output.
            Label outputs are not compared by difference: see ``min_agreement``.
        version: the version to optimize; the highest by default.
        sample: the inputs to compare and time on: one array (a single-input model),
            arrays by input name, or a ``.csv`` / ``.parquet`` / ``.npy`` file (up to
            1024 rows drawn with seed 0). ``None`` generates 64 rows: standard normal
            floats, integers 0-9, any other open axis 16 long (seed 0).
        labels: outputs compared as labels; by default integer outputs whose name holds
            ``label``, and ``config.toml``'s ``label_output``.
        threads: intra-op threads of both sessions (the server's ``session_options``).
        runs: timed runs per batch size and model, after 5 warm-up runs.
        per_channel: int8 only: per-channel weight scales (True), per-tensor (False),
            or per-tensor first and per-channel if that is outside tolerance (None).
        min_agreement: the share of rows on which every label output must agree with
            the reference: 1.0 (the default) allows no flipped label.
        progress: called with a line before each long step (default: logged at INFO).

    Returns:
        The report; ``version`` is the version written.

    Raises:
        ModelLoadError, ModelNotFoundError: no such folder, version or model file.
        InvalidInputError: the sample does not fit the model's inputs.
        OptimizationError: the candidate is outside tolerance (``.result`` holds the
            report; nothing is written), or could not be made or loaded.

    Example::

        result = optimize_model(Path("models/mlp"), mode="int8", tolerance=0.05)
        print(result.table())  # mlp version 1, int8 (...) -> version 2
    """
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not 0.0 <= min_agreement <= 1.0:
        raise InvalidInputError(f"min_agreement must be between 0 and 1, got {min_agreement}")
    if runs < 1:
        raise InvalidInputError(f"runs must be at least 1, got {runs}")
    say = progress or logger.info
    source_version, source = _source(folder, version)
    say(f"loading {source}")
    reference = OnnxRuntime(source, threads=threads)
    feeds, sample_text = sample_feeds(reference.inputs, sample)
    label_names = label_outputs(folder, reference.outputs, labels)
    say(f"running the reference on {sample_text}")
    expected = _outputs(reference, feeds)
    batchable = all(spec.shape and spec.shape[0] == -1 for spec in reference.inputs)

    work = Path(tempfile.mkdtemp(prefix=".optimize-", dir=folder))
    try:
        candidate_path = work / MODEL_FILE
        notes: list[str] = []
        attempts: list[dict[str, Any]] = [{}]
        if mode == "int8":
            prepared = work / "preprocessed.onnx"
            say("pre-processing for quantization (shape inference, basic optimizations)")
            failed = preprocess(source, prepared)
            if failed is not None:
                notes.append(f"quantization pre-processing skipped: {failed}")
                prepared = source
            choices = INT8_PER_CHANNEL_AUTO if per_channel is None else (per_channel,)
            attempts = [
                {
                    "per_channel": choice,
                    "weight_type": INT8_WEIGHT_TYPE,
                    "reduce_range": choice,
                    "op_types": list(INT8_OPS),
                    "preprocessed": failed is None,
                }
                for choice in choices
            ]
        for attempt, settings in enumerate(attempts):
            try:
                if mode == "graph":
                    say("optimizing the graph (ORT_ENABLE_EXTENDED, saved offline)")
                    settings = optimize_graph(source, candidate_path, threads)
                elif mode == "fp16":
                    say("converting to float16 (inputs and outputs stay float32)")
                    settings = to_fp16(source, candidate_path)
                else:
                    per_tensor = "per-channel" if settings["per_channel"] else "per-tensor"
                    say(f"quantizing MatMul/Gemm weights to int8 ({per_tensor})")
                    quantize(
                        prepared,
                        candidate_path,
                        per_channel=settings["per_channel"],
                        weight_type=settings["weight_type"],
                        reduce_range=settings["reduce_range"],
                    )
                candidate = OnnxRuntime(candidate_path, threads=threads)
            except ModelLoadError as exc:
                raise OptimizationError(
                    f"{source}: the {mode} model does not load in onnxruntime: {exc}"
                ) from None
            except Exception as exc:  # the converters raise anything from onnx or ORT
                raise OptimizationError(f"{source}: {mode} failed: {exc}") from None
            say("comparing outputs")
            fidelity = _judge(
                compare(
                    expected, _outputs(candidate, feeds), tolerance=tolerance, labels=label_names
                ),
                min_agreement,
            )
            if fidelity.passed or attempt == len(attempts) - 1:
                break
            notes.append(
                "per-tensor int8 was outside tolerance "
                f"({'; '.join(_delta_text(d) for d in fidelity.outputs)}); tried per-channel"
            )
            candidate.close()
        latencies = _latencies(reference, candidate, feeds, runs, batchable, say)
        candidate.close()
        reference.close()
        import onnxruntime as ort

        result = OptimizationResult(
            model=folder.name,
            mode=mode,
            source_version=source_version,
            version=None,
            size_before=source.stat().st_size,
            size_after=candidate_path.stat().st_size,
            latencies=latencies,
            fidelity=fidelity,
            settings=settings,
            sample=sample_text,
            threads=threads,
            runs=runs,
            onnxruntime=ort.__version__,
            notes=notes,
        )
        if not fidelity.passed:
            raise OptimizationError(_failure(result, min_agreement), result)
        for leftover in work.iterdir():
            if leftover.name != MODEL_FILE:
                leftover.unlink()
        # The report names the version it lands in, so it is saved just before the rename.
        staged = replace(result, version=max(_versions(folder), default=0) + 1)
        staged.save(work / REPORT_FILE)
        written = _write(folder, work)
        if written != staged.version:
            staged = replace(result, version=written)
            staged.save(folder / str(written) / REPORT_FILE)
        say(f"wrote {folder / str(written) / MODEL_FILE}")
        return staged
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _delta_text(delta: OutputDelta) -> str:
    if delta.kind == "label":
        return f"{delta.name} {delta.agreement:.2%} agree"
    return f"{delta.name} max |diff| {delta.max_abs_diff:.4g}"
