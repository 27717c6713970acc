"""A Hugging Face model folder → a text pipeline: tokenizer Python model + exported ONNX.

``convert_text_folder`` takes a local folder (``config.json``, the weights,
``tokenizer.json`` or what ``transformers`` builds one from; a sentence-transformers
folder adds ``modules.json`` and its pooling config) and writes, into the repository
holding ``folder``:

- ``NAME-tokenizer`` (Python model, ``_tokenizer_model.py``): ``text`` BYTES ``[-1]`` →
  ``input_ids``, ``attention_mask``, ``token_type_ids`` INT64 ``[-1, -1]``, each batch
  padded to its longest text and cut at ``max_length`` tokens;
- ``NAME-encoder`` (``feature-extraction``): the transformer with the folder's pooling
  (mean, CLS, max or mean-sqrt-len; mean for a plain transformers folder) and, when
  ``modules.json`` has ``Normalize``, L2 normalisation inside the graph →
  ``sentence_embedding`` FP32 ``[-1, D]``; or ``NAME-classifier``
  (``text-classification``): the sequence classifier with a softmax →
  ``label`` INT64 ``[-1]`` and ``probabilities`` FP32 ``[-1, classes]``;
- ``NAME``: the pipeline of the two, text in; a classifier's labels come from
  ``config.json``'s ``id2label``.

The encoder is exported with ``torch.onnx.export(dynamo=False, opset_version=17)``
(the TorchScript exporter: the newer one needs ``onnxscript``) and written only if ONNX
Runtime agrees with torch on the sample texts, tokenized by the written tokenizer as the
server runs it: every element within ``tolerance``, embeddings' cosine at least
``min_cosine``, labels equal. Files are written atomically and only when their content
changes, so a server watching the repository reloads nothing a rebuild left the same.
Needs torch and transformers (``pip install 'ligeiro[text-build]'``); nothing is
downloaded (``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, final

import numpy as np

from ..errors import ConversionError
from ._text_folder import TASKS, TextFolder, read_json, read_text_folder

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch

__all__ = [
    "BATCHING",
    "TASKS",
    "TextConversionResult",
    "TextFolder",
    "TextModule",
    "TokenizerModel",
    "check_text_model",
    "convert_text_folder",
    "export_text_model",
    "load_tokenizer",
    "pipeline_config",
    "publish",
    "read_text_folder",
    "tokenize",
    "write_pipeline",
    "write_tokenizer",
]

logger = logging.getLogger(__name__)

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EMBEDDING = "sentence_embedding"
LABEL = "label"
PROBABILITIES = "probabilities"
OPSET = 17
MAX_CHARS = 10_000
PIPELINE_README = "A pipeline: its steps are in ../config.toml; this version has no files.\n"
_TOKENIZER_MODEL = Path(__file__).with_name("_tokenizer_model.py")
# Checked when no --data is given: short, long (cut at max_length) and non-ASCII texts.
SAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "I loved this film; the acting was wonderful.",
    "This was the worst meal I have had in years.",
    "Où est la gare ? Wie spät ist es?",
    "ok",
    " ".join(["A long text that the tokenizer has to cut at its maximum length."] * 60),
)
# A pipeline's [batching]: requests that arrive while a batch runs are concatenated and
# run as the next one, every step at once (the tokenizer sees the batch). On the thread
# even with one core: ONNX Runtime releases the GIL, so the event loop keeps reading
# requests during a run of tens of milliseconds and the next batch holds all of them. On
# the event loop ("loop"), wrk c=32 on one core measured a p99 of 1.4-1.6 s against
# 0.35-0.55 s here, and 8-12 % fewer req/s (all-MiniLM-L6-v2, benchmarks/bench_text.py).
# idle_on_loop: one request at a time skips the hop (c=1 p50 1.08x in-process, not 1.15x).
BATCHING = """
[batching]
max_batch_size = 64
max_queue_delay_us = 500
max_queue_size = 512
run_on = "thread"
idle_on_loop = true
"""


class TokenizerModel(Protocol):
    """The tokenizer Python model (``_tokenizer_model.Model``) as the server runs it."""

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class TextModule(Protocol):
    """The torch module exported (``_text_modules``): token tensors in."""

    def describe(self) -> str: ...

    def __call__(self, *tokens: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]: ...


@final
@dataclass(frozen=True, slots=True)
class TextConversionResult:
    """A converted text model on disk and the check it passed.

    Attributes:
        pipeline: the pipeline's folder (``REPO/NAME``): text in.
        tokenizer: the tokenizer's folder.
        model: the ONNX step's folder (encoder or classifier).
        report_path: the check's report (``parity.json`` in ``model``).
        report: that report.
    """

    pipeline: Path
    tokenizer: Path
    model: Path
    report_path: Path
    report: dict[str, Any]

    def table(self) -> str:
        """The check, one line per batch of sample texts."""
        lines = [f"reference: {self.report['reference']}"]
        for name, batch in self.report["batches"].items():
            detail = f"max |diff| {batch['max_abs_diff']:.3g}"
            if "min_cosine" in batch:
                detail += f", min cosine {batch['min_cosine']:.6f}"
            if "label_agreement" in batch:
                detail += f", labels {100 * batch['label_agreement']:.2f}% agree"
            lines.append(f"{name} {batch['shape']}: {detail}")
        lines.append(f"tolerance {self.report['tolerance']:g}: PASSED")
        lines.extend(f"note: {note}" for note in self.report.get("notes", ()))
        return "\n".join(lines)


def publish(path: Path, data: bytes | str) -> None:
    """Write ``path`` atomically, and only if its content changes.

    A server may be watching the repository: it never sees a half-written model, and a
    rebuild that changes nothing reloads nothing.
    """
    content = data.encode() if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == content:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(content)
    os.replace(partial, path)


def tokenizer_json(folder: TextFolder) -> bytes:
    """The folder's ``tokenizer.json``, with a pad token set when the file has none."""
    from tokenizers import Tokenizer

    shipped = folder.transformer / "tokenizer.json"
    if shipped.is_file():
        tokenizer = Tokenizer.from_file(str(shipped))
        if tokenizer.padding is not None:
            return shipped.read_bytes()
    else:
        tokenizer = _tokenizer_from_transformers(folder.transformer)
    settings = folder.transformer / "tokenizer_config.json"
    pad = read_json(settings).get("pad_token") if settings.is_file() else None
    pad = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = tokenizer.token_to_id(str(pad)) if pad else None
    if pad_id is None:
        raise ConversionError(
            f"{folder.transformer}: the tokenizer has no pad token (tokenizer_config.json "
            "pad_token); batches of texts of different lengths need one"
        )
    tokenizer.enable_padding(pad_id=pad_id, pad_token=str(pad))
    return tokenizer.to_str().encode()


def _tokenizer_from_transformers(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConversionError(
            f"{folder}: no tokenizer.json, and transformers cannot build one: {exc}"
        ) from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConversionError(
            f"{folder}: no tokenizer.json, and the tokenizer has no tokenizers backend"
        )
    return backend


def write_tokenizer(
    folder: Path, text_folder: TextFolder, *, max_chars: int = MAX_CHARS, comment: str
) -> Path:
    """Write the tokenizer Python model (``folder/1``); return that version folder."""
    version = folder / "1"
    publish(version / "tokenizer.json", tokenizer_json(text_folder))
    publish(version / "model.py", _TOKENIZER_MODEL.read_bytes())
    outputs = "".join(
        f'\n[[outputs]]\nname = "{name}"\ndatatype = "INT64"\nshape = [-1, -1]\n'
        for name in TOKEN_INPUTS
    )
    publish(
        folder / "config.toml",
        f"{comment}"
        'platform = "python"\n\n[parameters]\n'
        f"max_length = {text_folder.max_length}  # tokens per text, [CLS] and [SEP] "
        "included; longer texts are cut\n"
        f"max_chars = {max_chars}  # longer texts are refused (400)\n\n"
        '[[inputs]]\nname = "text"\ndatatype = "BYTES"\nshape = [-1]\n' + outputs,
    )
    return version


def load_tokenizer(version: Path, max_length: int, max_chars: int = MAX_CHARS) -> TokenizerModel:
    """The tokenizer model in ``version`` as the server loads it (its ``model.py``)."""
    spec = importlib.util.spec_from_file_location("ligeiro_text_tokenizer", version / "model.py")
    if spec is None or spec.loader is None:
        raise ConversionError(f"cannot import {version / 'model.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model: TokenizerModel = module.Model(
        version, {"max_length": max_length, "max_chars": max_chars}
    )
    return model


def tokenize(tokenizer: TokenizerModel, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The token tensors the tokenizer model gives for ``texts``."""
    column = np.array([t.encode() for t in texts], dtype=object)
    return tokenizer.predict({"text": column})


def export_text_model(
    text_folder: TextFolder, path: Path, sample: Mapping[str, np.ndarray]
) -> tuple[TextModule, list[str]]:
    """Export the folder's model (with pooling, or a softmax) to ``path``.

    Returns:
        The torch module exported (the reference for the check) and its input names.
    """
    import torch

    from ._text_modules import text_module

    module, inputs = text_module(text_folder)
    outputs = [EMBEDDING] if text_folder.task == "feature-extraction" else [LABEL, PROBABILITIES]
    args = tuple(torch.from_numpy(np.asarray(sample[name])) for name in inputs)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in inputs}
    axes.update({name: {0: "batch"} for name in outputs})
    logger.info("exporting %s with torch.onnx.export", text_folder.transformer)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns about its deprecation and about traced Python
        # conditionals on shapes (transformers' mask helpers); the check on other
        # shapes is what tells.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:  # the exporter raises many kinds; say which model failed
            raise ConversionError(
                f"torch.onnx.export failed for {text_folder.transformer}: {exc}"
            ) from exc
    return module, inputs


def check_text_model(
    module: TextModule,
    path: Path,
    batches: Mapping[str, Mapping[str, np.ndarray]],
    *,
    task: str,
    inputs: Sequence[str],
    tolerance: float,
    min_cosine: float = 0.9999,
) -> dict[str, Any]:
    """ONNX Runtime against torch on each named batch of token tensors.

    Raises:
        ConversionError: an element differs by more than ``tolerance``, an embedding's
            cosine is below ``min_cosine``, a label differs, or a shape differs.
    """
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    report: dict[str, Any] = {"reference": module.describe(), "batches": {}}
    failures = []
    for name, feeds in batches.items():
        feed = {k: np.asarray(feeds[k]) for k in inputs}
        with torch.no_grad():
            answer = module(*(torch.from_numpy(feed[k]) for k in inputs))
        expected = [e.numpy() for e in (answer if isinstance(answer, tuple) else (answer,))]
        got = session.run(None, feed)
        if any(g.shape != e.shape for g, e in zip(got, expected, strict=True)):
            raise ConversionError(
                f"parity check failed on {name}: ONNX shapes {[list(g.shape) for g in got]}, "
                f"torch's {[list(e.shape) for e in expected]}"
            )
        values, reference = got[-1], expected[-1]
        batch: dict[str, Any] = {
            "shape": list(feed["input_ids"].shape),
            "max_abs_diff": float(np.max(np.abs(values - reference))),
        }
        if task == "feature-extraction":
            batch["min_cosine"] = float(np.min(_cosines(values, reference)))
            if batch["min_cosine"] < min_cosine:
                failures.append(f"{name}: cosine {batch['min_cosine']:.6f} < {min_cosine}")
        else:
            batch["label_agreement"] = float(np.mean(got[0] == expected[0]))
            if batch["label_agreement"] < 1.0:
                failures.append(f"{name}: labels agree on {batch['label_agreement']:.2%}")
        if batch["max_abs_diff"] > tolerance:
            failures.append(f"{name}: max |diff| {batch['max_abs_diff']:.3g} > {tolerance:g}")
        report["batches"][name] = batch
    report["max_abs_diff"] = max(b["max_abs_diff"] for b in report["batches"].values())
    report["tolerance"] = tolerance
    if failures:
        raise ConversionError(
            "parity check failed: ONNX Runtime and torch differ; nothing was written "
            f"({'; '.join(failures)})"
        )
    return report


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12))


def pipeline_config(
    comment: str,
    steps: Sequence[str],
    outputs: Sequence[tuple[str, str, str]],
    *,
    labels: Sequence[str] | None = None,
    batching: str = BATCHING,
) -> str:
    """A pipeline's ``config.toml``: ``outputs`` are (name, datatype, shape as TOML)."""
    text = comment + 'platform = "pipeline"\n'
    if labels is not None:
        text += (
            f"labels = [{', '.join(json.dumps(label) for label in labels)}]\n"
            f'label_output = "{LABEL}"\nprobability_output = "{PROBABILITIES}"\n'
        )
    text += "".join(f'\n[[steps]]\nmodel = "{step}"\n' for step in steps)
    text += "".join(
        f'\n[[outputs]]\nname = "{name}"\ndatatype = "{datatype}"\nshape = {shape}\n'
        for name, datatype, shape in outputs
    )
    return text + batching


def write_pipeline(folder: Path, config: str) -> None:
    """Write a pipeline's ``config.toml`` and its version folder (which has no files)."""
    publish(folder / "1" / "README.txt", PIPELINE_README)
    publish(folder / "config.toml", config)


def convert_text_folder(
    source: str | Path,
    folder: str | Path,
    *,
    task: str,
    texts: Sequence[str] | None = None,
    tolerance: float = 1e-5,
    min_cosine: float = 0.9999,
    max_length: int | None = None,
) -> TextConversionResult:
    """Convert a local Hugging Face model folder to a text pipeline at ``folder``.

    Args:
        source: the model folder (nothing is downloaded).
        folder: the pipeline's folder in a repository, ``REPO/NAME``; the steps are
            written beside it as ``NAME-tokenizer`` and ``NAME-encoder`` (or
            ``NAME-classifier``).
        task: ``"feature-extraction"`` (embeddings) or ``"text-classification"``.
        texts: the sample texts to check on (a few built-in ones when ``None``).
        tolerance: the largest difference allowed between ONNX Runtime and torch.
        min_cosine: the smallest cosine allowed between their embeddings.
        max_length: tokens kept per text (default: the folder's ``max_seq_length`` or
            the tokenizer's limit).

    Raises:
        ConversionError: the folder is not one this converts, the export fails, or the
            check fails; the ONNX step is then not written.

    Example::

        result = convert_text_folder("all-MiniLM-L6-v2", "models/minilm",
                                     task="feature-extraction")
        print(result.table())
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never ask the hub
    for needed in ("torch", "transformers", "tokenizers"):
        if importlib.util.find_spec(needed) is None:
            raise ConversionError(
                f"converting a Hugging Face folder needs {needed}: "
                "pip install 'ligeiro[text-build]' (torch==2.13.0, the CPU wheel)"
            )
    folder = Path(folder)
    text_folder = read_text_folder(source, task, max_length=max_length)
    samples = list(texts) if texts is not None else list(SAMPLE_TEXTS)
    if not samples:
        raise ConversionError("no sample texts to check on")
    name, repository = folder.name, folder.parent
    what = f"(ligeiro convert --task {task} from {text_folder.path.name})"
    tokenizer_folder = repository / f"{name}-tokenizer"
    version = write_tokenizer(
        tokenizer_folder,
        text_folder,
        comment=f"# {text_folder.path.name}'s tokenizer\n# {what}:\n"
        "# UTF-8 text in, token tensors out, each batch padded to its longest text.\n",
    )
    tokenizer = load_tokenizer(version, text_folder.max_length)
    batches = {
        "sample texts": tokenize(tokenizer, samples),
        "one text": tokenize(tokenizer, samples[:1]),
    }
    classify = task == "text-classification"
    model_folder = repository / f"{name}-{'classifier' if classify else 'encoder'}"
    with tempfile.TemporaryDirectory(prefix="ligeiro-text-") as work:
        exported = Path(work) / "model.onnx"
        module, inputs = export_text_model(text_folder, exported, batches["one text"])
        report = check_text_model(
            module, exported, batches, task=task, inputs=inputs, tolerance=tolerance,
            min_cosine=min_cosine,
        )  # fmt: skip
        report["notes"] = text_folder.notes
        publish(model_folder / "1" / "model.onnx", exported.read_bytes())
    publish(
        model_folder / "config.toml",
        f"# {text_folder.path.name} exported to ONNX {what}: token tensors in,\n"
        f"# {'labels and probabilities' if classify else 'sentence embeddings'} out. "
        f"Serve text through the {name} pipeline.\n",
    )
    report_path = model_folder / "parity.json"
    publish(report_path, json.dumps(report, indent=2) + "\n")
    if classify:
        assert text_folder.labels is not None
        outputs = [
            (LABEL, "INT64", "[-1]"),
            (PROBABILITIES, "FP32", f"[-1, {len(text_folder.labels)}]"),
        ]
    else:
        outputs = [(EMBEDDING, "FP32", f"[-1, {text_folder.dimensions}]")]
    steps = [tokenizer_folder.name, model_folder.name]
    comment = f"# Text in, {'labels' if classify else 'sentence embeddings'} out {what}.\n"
    write_pipeline(folder, pipeline_config(comment, steps, outputs, labels=text_folder.labels))
    logger.info("wrote the %s pipeline %s", task, folder)
    return TextConversionResult(folder, tokenizer_folder, model_folder, report_path, report)


