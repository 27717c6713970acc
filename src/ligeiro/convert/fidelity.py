"""How far a converted or optimized model's answers are from the reference's.

One comparison serves both ``ligeiro convert`` (the original model against its ONNX)
and ``ligeiro optimize`` (the ONNX model against its optimized version): labels must
agree on every row, and every other output must stay within ``tolerance`` (largest
absolute difference). The result prints as a table and saves as JSON.

``convert`` adds a second, informative comparison: the original model on the sample as
read against the original on the sample cast to the served input type
(``InputRounding``): what a client's rounding to float32 changes, which no converter
can change. It fails the check only when asked (``strict``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ["Fidelity", "InputRounding", "OutputDelta", "compare"]

# Rows listed in a report when labels disagree; the count is always complete.
_ROWS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class OutputDelta:
    """One output compared: labels by agreement, anything else by difference.

    Attributes:
        name: the output (the candidate's name).
        kind: ``"label"`` (compared for equality) or ``"values"`` (by difference).
        max_abs_diff, mean_abs_diff: over every element (``values`` outputs).
        agreement: share of rows with equal labels (``label`` outputs), 0 to 1.
        disagreeing_rows: up to 20 row numbers where labels differ.
        disagreements: how many rows differ.
        min_cosine: the lowest cosine similarity between the rows of the reference and
            of the candidate, for 2-D float outputs (embeddings, probabilities).
    """

    name: str
    kind: str
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    agreement: float = 1.0
    disagreeing_rows: list[int] = field(default_factory=list)
    disagreements: int = 0
    min_cosine: float | None = None


@dataclass(frozen=True, slots=True)
class InputRounding:
    """What casting the sample to the served input type alone changes in the original's answers.

    Attributes:
        dtype: the served input type (``"float32"``).
        outputs: the original on the sample as read (reference) against the original on
            the cast sample (candidate), output by output.
        changed: a label differs, or a value by more than the tolerance.
        strict: whether ``changed`` fails the check (``--strict-input-precision``).
        suggestion: what to do about it, when something changed.
    """

    dtype: str
    outputs: list[OutputDelta]
    changed: bool
    strict: bool = False
    suggestion: str | None = None


@dataclass(frozen=True, slots=True)
class Fidelity:
    """The comparison of every output, and whether it passed.

    Attributes:
        rows: rows compared.
        tolerance: the largest absolute difference allowed for ``values`` outputs.
        outputs: one delta per output.
        passed: labels agree on every row and every difference is within tolerance
            (and, when ``input_rounding.strict``, rounding the input changed nothing).
        notes: what the reader should know (e.g. "float64 model served as float32").
        input_rounding: the effect of the input's rounding alone, when it rounded a value.
    """

    rows: int
    tolerance: float
    outputs: list[OutputDelta]
    passed: bool
    notes: list[str] = field(default_factory=list)
    input_rounding: InputRounding | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        """Write the report as JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> str:
        """A plain-text table for the terminal."""
        lines = [f"{'output':<24} {'check':<10} {'result':<40} ok"]
        lines += _rows(self.outputs, self.tolerance, "yes", "NO")
        lines += [f"note: {note}" for note in self.notes]
        rounding = self.input_rounding
        if rounding is not None:
            role = "fails the check" if rounding.strict else "information, not checked"
            lines.append(
                f"input rounding to {rounding.dtype} ({role}): the original model on the "
                f"sample as read vs on the {rounding.dtype} values a client sends"
            )
            lines += _rows(rounding.outputs, self.tolerance, "same", "changed")
            if rounding.suggestion:
                lines.append(f"suggestion: {rounding.suggestion}")
        lines.append(f"{self.rows} rows: {'PASSED' if self.passed else 'FAILED'}")
        return "\n".join(lines)


def _rows(deltas: list[OutputDelta], tolerance: float, yes: str, no: str) -> list[str]:
    lines = []
    for delta in deltas:
        if delta.kind == "label":
            result = f"{delta.agreement:.2%} agree ({delta.disagreements} differ)"
            ok = delta.disagreements == 0
        else:
            result = f"max |diff| {delta.max_abs_diff:.4g}, mean {delta.mean_abs_diff:.3g}"
            if delta.min_cosine is not None:
                result += f", cos >= {delta.min_cosine:.6f}"
            ok = delta.max_abs_diff <= tolerance
        check = "labels" if delta.kind == "label" else f"<= {tolerance:g}"
        lines.append(f"{delta.name:<24} {check:<10} {result:<40} {yes if ok else no}")
        if delta.disagreeing_rows:
            shown = ", ".join(map(str, delta.disagreeing_rows))
            more = "" if delta.disagreements <= _ROWS_SHOWN else ", ..."
            lines.append(f"{'':<24} rows: {shown}{more}")
    return lines


def _cosine(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    if reference.ndim != 2 or reference.dtype.kind != "f":
        return None
    a = reference.astype(np.float64)
    b = candidate.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, np.sum(a * b, axis=1) / norms, 1.0)
    return float(np.min(cosine)) if cosine.size else None


def compare(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    *,
    tolerance: float,
    labels: frozenset[str] = frozenset(),
    notes: list[str] | None = None,
) -> Fidelity:
    """Compare the candidate's outputs with the reference's, output by output.

    Args:
        reference: the outputs that are right (the original model's, or the ONNX
            model's before optimization), by name.
        candidate: the same outputs from the converted or optimized model.
        tolerance: the largest absolute difference allowed outside labels.
        labels: outputs compared for equality (class labels).
        notes: lines to carry into the report.

    Raises:
        ValueError: an output is missing from the candidate, or shapes differ.
    """
    deltas = []
    rows = 0
    passed = True
    for name, ref in reference.items():
        if name not in candidate:
            raise ValueError(f"the candidate has no output {name!r}; it has {', '.join(candidate)}")
        got = np.asarray(candidate[name])
        ref = np.asarray(ref)
        if got.shape != ref.shape:
            raise ValueError(
                f"output {name!r}: shape {list(got.shape)} differs from the reference's "
                f"{list(ref.shape)}"
            )
        rows = max(rows, ref.shape[0] if ref.ndim else 1)
        if name in labels or ref.dtype.kind in "OUSb":
            differ = np.flatnonzero(
                (ref != got).reshape(ref.shape[0], -1).any(axis=1) if ref.ndim else ref != got
            )
            deltas.append(
                OutputDelta(
                    name,
                    "label",
                    agreement=1.0 - len(differ) / max(1, ref.shape[0] if ref.ndim else 1),
                    disagreeing_rows=differ[:_ROWS_SHOWN].tolist(),
                    disagreements=len(differ),
                )
            )
            passed = passed and len(differ) == 0
            continue
        diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        max_diff = float(diff.max()) if diff.size else 0.0
        deltas.append(
            OutputDelta(
                name,
                "values",
                max_abs_diff=max_diff,
                mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
                min_cosine=_cosine(ref, got),
            )
        )
        passed = passed and max_diff <= tolerance
    return Fidelity(rows, tolerance, deltas, passed, list(notes or []))
