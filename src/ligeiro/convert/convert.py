"""Saved model + sample data → a checked model folder: ``N/model.onnx``, ``config.toml``.

``convert_model`` loads the model (see ``loading``), converts it (sklearn and the
boosters through skl2onnx / onnxmltools, CatBoost through its own exporter, PyTorch
through ``torch.onnx.export``), runs the original and the ONNX model on exactly the
input a client sends (the sample cast to the ONNX input's type), and writes the folder
only when they agree: labels on every row, other outputs within ``tolerance``. That is
the converter's fidelity. What the cast itself changes (the original on the sample as
read against the original on the cast values) is reported apart, with the rows it
affects, and fails the check only with ``strict_input_precision``; where it changes
labels the report suggests ``input_dtype="float64"`` (``--input-dtype float64``), which
serves double inputs with tree thresholds kept in float64 (see ``_precision``). The
report (``fidelity.json``) lands beside the model.

Tolerances: probabilities are compared absolutely (``tolerance``, 1e-5 by default).
Unbounded values (regression predictions, decision scores) are compared relative to
their magnitude, ``tolerance * max(1, max |reference|)``: float32 keeps about seven
significant digits, so a diabetes regressor predicting 300 differs by ~1e-5 however
exact the conversion; the report's note gives the scale and the absolute bound used.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import msgspec
import numpy as np

from ..errors import ConversionError
from ..repository.config import CONFIG_FILE, ModelConfig
from ..repository.layout import MODEL_FILE
from .data import load_sample
from .fidelity import Fidelity, InputRounding, OutputDelta, compare
from .loading import load_saved_model

if TYPE_CHECKING:
    import pandas as pd

    from ._converted import ConvertedModel

__all__ = ["FIDELITY_FILE", "INPUT_DTYPES", "ConversionResult", "convert_model"]

logger = logging.getLogger(__name__)

FIDELITY_FILE = "fidelity.json"
INPUT_DTYPES = ("float32", "float64")
# The keys conversion writes; an existing config.toml must agree on them.
_CONFIG_KEYS = ("features", "labels", "label_output", "probability_output")


@final
@dataclass(frozen=True, slots=True)
class ConversionResult:
    """A converted model on disk and the check it passed.

    Attributes:
        folder: the model's folder (``REPO/NAME``).
        version: the version folder written (``folder/<version>``).
        model_path: ``folder/<version>/model.onnx``.
        config_path: ``folder/config.toml`` (written, or an existing one that agrees).
        report_path: ``folder/<version>/fidelity.json``.
        fidelity: the comparison; ``fidelity.table()`` prints it.
        inputs: the ONNX inputs' names, in order.
        outputs: the ONNX outputs' names, in order.
    """

    folder: Path
    version: int
    model_path: Path
    config_path: Path
    report_path: Path
    fidelity: Fidelity
    inputs: list[str]
    outputs: list[str]


def convert_model(
    source: str | Path | object,
    sample: str | Path | pd.DataFrame | np.ndarray,
    folder: str | Path,
    *,
    version: int | None = None,
    tolerance: float = 1e-5,
    trust_pickle: bool = False,
    sample_rows: int | None = None,
    drop_columns: tuple[str, ...] = (),
    seed: int = 0,
    input_dtype: str = "float32",
    strict_input_precision: bool = False,
) -> ConversionResult:
    """Convert a saved model to ONNX, check it on ``sample``, and write its model folder.

    Args:
        source: a model file or ``"package.module:attribute"`` (see
            ``load_saved_model``), or a fitted estimator, booster or torch module.
        sample: rows to check on, and to read the input layout and column names from:
            a ``.csv`` / ``.parquet`` / ``.npy`` path, a DataFrame or a 2-D array.
        folder: the model's folder in a repository (``REPO/NAME``); created if needed.
        version: the version folder to write; the next free number when ``None``.
        tolerance: the largest absolute difference allowed for probabilities (relative
            to the magnitude for regression values and scores; module docstring).
        trust_pickle: allow loading pickle files (pickle runs code).
        sample_rows: check on this many rows drawn at random (``seed``) from the sample.
        drop_columns: columns of the sample file to leave out (a target column).
        seed: the draw's seed, so a report can be reproduced.
        input_dtype: the numeric input type served, ``"float32"`` (clients send FP32)
            or ``"float64"`` (FP64; tree ensembles then compare in float64 like the
            original). PyTorch modules take float32 only.
        strict_input_precision: fail when rounding the sample to ``input_dtype`` alone
            changes the original's answers (by default that is reported, not checked).

    Returns:
        What was written, and the fidelity report.

    Raises:
        UntrustedModelError: ``source`` is a pickle (or holds untrusted skops types)
            and ``trust_pickle`` is false; nothing was unpickled.
        ConversionError: the model cannot be converted, the check failed (the message
            carries the report's table), the version exists, or ``config.toml`` exists
            and says something else. Nothing is written then.
        InvalidInputError: the sample cannot be read.

    Example::

        result = convert_model("model.skops", "sample.csv", "models/churn")
        print(result.fidelity.table())
    """
    folder = Path(folder)
    if version is not None and version < 1:
        raise ConversionError(f"version must be a positive integer, got {version}")
    if input_dtype not in INPUT_DTYPES:
        raise ConversionError(
            f"input_dtype must be one of {', '.join(INPUT_DTYPES)}, got {input_dtype!r}"
        )
    name = str(source) if isinstance(source, (str, Path)) else type(source).__name__
    model = (
        load_saved_model(source, trust_pickle=trust_pickle)
        if isinstance(source, (str, Path))
        else source
    )
    data = _sample(sample, rows=sample_rows, seed=seed, drop=drop_columns)
    converted = _convert(model, data, input_dtype)
    fidelity = _check(converted, tolerance, strict_input_precision=strict_input_precision)
    table = fidelity.table()
    if not fidelity.passed:
        rounding = fidelity.input_rounding
        why = (
            f"rounding the sample to {rounding.dtype} changes the original's answers "
            "(strict input precision)"
            if rounding is not None and rounding.strict and rounding.changed
            and all(_within(d, fidelity.tolerance) for d in fidelity.outputs)
            else "the ONNX model disagrees with the original on the sample"
        )
        raise ConversionError(f"{name}: {why}; nothing was written\n{table}")
    logger.info("%s: parity check passed\n%s", name, table)
    config_text = _config_text(converted, name)
    config_path = folder / CONFIG_FILE
    write_config = _config_needs_writing(config_path, config_text)
    number = _version(folder, version)
    target = folder / str(number)
    folder.mkdir(parents=True, exist_ok=True)
    # Build the version in a hidden sibling and rename it into place: a server watching
    # the repository skips hidden folders, so it never sees a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=f".{number}-", dir=folder))
    try:
        (staging / MODEL_FILE).write_bytes(converted.onnx_model.SerializeToString())
        fidelity.save(staging / FIDELITY_FILE)
        if write_config:
            tmp_config = staging / CONFIG_FILE
            tmp_config.write_text(config_text)
            os.replace(tmp_config, config_path)
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConversionError(f"{folder}: cannot write the model folder: {exc}") from exc
    logger.info("%s: wrote %s", name, target / MODEL_FILE)
    graph = converted.onnx_model.graph
    return ConversionResult(
        folder=folder,
        version=number,
        model_path=target / MODEL_FILE,
        config_path=config_path,
        report_path=target / FIDELITY_FILE,
        fidelity=fidelity,
        inputs=[i.name for i in graph.input],
        outputs=[o.name for o in graph.output],
    )


def _sample(
    sample: str | Path | pd.DataFrame | np.ndarray,
    *,
    rows: int | None,
    seed: int,
    drop: tuple[str, ...],
) -> pd.DataFrame | np.ndarray:
    if isinstance(sample, (str, Path)):
        return load_sample(Path(sample), rows=rows, seed=seed, drop=drop)
    data: Any = sample
    if drop:
        data = data.drop(columns=list(drop))
    if rows is not None and rows < len(data):
        picked = np.sort(np.random.default_rng(seed).choice(len(data), size=rows, replace=False))
        data = data.iloc[picked] if hasattr(data, "iloc") else data[picked]
    if len(data) == 0:
        raise ConversionError("the sample has no rows")
    result: pd.DataFrame | np.ndarray = data
    return result


def _convert(model: Any, data: pd.DataFrame | np.ndarray, input_dtype: str) -> ConvertedModel:
    from ._torch import convert_torch_module, is_torch_module

    if is_torch_module(model):
        if input_dtype != "float32":
            raise ConversionError(
                f"a PyTorch module is exported with float32 inputs; got input_dtype {input_dtype!r}"
            )
        return convert_torch_module(model, data)
    kind = type(model).__module__.split(".")[0]
    if kind == "lightgbm" and type(model).__name__ == "Booster":
        from ._boosting import convert_lightgbm_booster

        return convert_lightgbm_booster(model, data, input_dtype=input_dtype)
    if kind == "catboost":
        from ._catboost import convert_catboost_model

        return convert_catboost_model(model, data, input_dtype=input_dtype)
    if not hasattr(model, "predict"):
        raise ConversionError(
            f"{type(model).__name__} is not a model convert knows: expected a fitted "
            "scikit-learn estimator or pipeline, an XGBoost, LightGBM or CatBoost model, "
            "or a torch.nn.Module"
        )
    try:
        from ._sklearn import convert_sklearn_model
    except ImportError:
        raise ConversionError(
            "converting needs scikit-learn and skl2onnx: pip install 'ligeiro[convert]'"
        ) from None
    return convert_sklearn_model(model, data, input_dtype=input_dtype)


def _check(converted: ConvertedModel, tolerance: float, *, strict_input_precision: bool) -> Fidelity:
    """Run the ONNX model on the sample and compare it with the original's answers."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ONNX Runtime warns on stderr when an output's runtime shape differs from the
    # declared one (skl2onnx declares [N, 2] for a binary classifier's single score
    # column); the comparison below checks shapes itself.
    options.log_severity_level = 3
    logger.info("running the original and the ONNX model on %d rows", _rows(converted))
    try:
        session = ort.InferenceSession(
            converted.onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        candidate = dict(zip(names, session.run(None, converted.feed), strict=True))
    except Exception as exc:  # ORT raises its own kinds for graphs it cannot run
        raise ConversionError(
            f"ONNX Runtime cannot run the converted model ({converted.input_dtype} inputs): "
            f"{exc}"
        ) from exc
    notes = [
        f"compared on the {converted.input_dtype} values a client sends: the original "
        "and the ONNX model given the same input (the converter's fidelity)",
        *converted.notes,
    ]
    bound = tolerance
    relative = [n for n in converted.relative_outputs if n in converted.reference]
    if relative:
        scale = max(
            1.0, *(float(np.max(np.abs(converted.reference[n]), initial=0)) for n in relative)
        )
        bound = tolerance * scale
        notes.append(
            f"{', '.join(relative)}: unbounded values, compared relative to their magnitude: "
            f"tolerance {tolerance:g} x max |value| {scale:.4g} = {bound:.3g} absolute "
            "(float32 keeps about 7 significant digits)"
        )
    labels = frozenset({converted.label_output}) if converted.label_output else frozenset()
    try:
        fidelity = compare(
            converted.reference, candidate, tolerance=bound, labels=labels, notes=notes
        )
    except ValueError as exc:
        raise ConversionError(
            f"the ONNX model's outputs do not match the original's: {exc}"
        ) from exc
    if converted.unrounded_reference is None:
        return fidelity
    effect = compare(
        converted.unrounded_reference, converted.reference, tolerance=bound, labels=labels
    )
    changed = not effect.passed
    suggestion = None
    if changed and converted.input_dtype == "float32":
        suggestion = (
            "convert with --input-dtype float64 (input_dtype='float64') to serve the "
            "original's answers on float64 data; clients then send FP64"
        )
    rounding = InputRounding(
        converted.input_dtype, effect.outputs, changed, strict_input_precision, suggestion
    )
    return replace(
        fidelity,
        passed=fidelity.passed and not (changed and strict_input_precision),
        input_rounding=rounding,
    )


def _within(delta: OutputDelta, tolerance: float) -> bool:
    return delta.disagreements == 0 and delta.max_abs_diff <= tolerance


def _rows(converted: ConvertedModel) -> int:
    return len(next(iter(converted.feed.values())))


def _config_text(converted: ConvertedModel, name: str) -> str:
    lines = [
        f"# Written by ligeiro convert from {Path(name).name}: the names that "
        "POST /v1/models/{m}:predict uses.",
    ]
    if converted.features is not None:
        lines.append(f"features = {_toml_list(converted.features)}")
    if converted.labels is not None:
        lines.append(f"labels = {_toml_list(converted.labels)}")
    if converted.label_output is not None:
        lines.append(f'label_output = "{converted.label_output}"')
    if converted.probability_output is not None:
        lines.append(f'probability_output = "{converted.probability_output}"')
    text = "\n".join(lines) + "\n"
    msgspec.toml.decode(text.encode(), type=ModelConfig)  # what the server will read
    return text


def _toml_list(values: list[str]) -> str:
    # JSON strings are TOML basic strings (the same escapes).
    return msgspec.json.encode(values).decode()


def _config_needs_writing(path: Path, text: str) -> bool:
    """False when ``path`` exists and agrees; raise when it says something else."""
    if not path.is_file():
        return True
    ours = msgspec.toml.decode(text.encode(), type=ModelConfig)
    try:
        theirs = msgspec.toml.decode(path.read_bytes(), type=ModelConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConversionError(f"{path}: the existing config is invalid: {exc}") from None
    differ = [k for k in _CONFIG_KEYS if getattr(ours, k) != getattr(theirs, k)]
    if differ:
        detail = "; ".join(
            f"{k}: has {getattr(theirs, k)!r}, the new model needs {getattr(ours, k)!r}"
            for k in differ
        )
        raise ConversionError(
            f"{path} exists and does not fit the new model ({detail}); not overwriting it. "
            "Convert into a new folder, or edit or remove that config.toml first"
        )
    return False


def _version(folder: Path, version: int | None) -> int:
    existing = (
        [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
        if folder.is_dir()
        else []
    )
    if version is None:
        return max(existing, default=0) + 1
    if (folder / str(version)).exists():
        raise ConversionError(
            f"{folder / str(version)} already exists; pick another version or remove it"
        )
    return version
