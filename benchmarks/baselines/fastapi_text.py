"""Seed 002's Python server: FastAPI + ONNX Runtime + HF tokenizers, one run per request.

Written as the seed's service is: ``POST /age`` takes ``{"inputs": "..."}``, tokenizes the
text, runs ONNX Runtime once and answers with the class; no batching, one uvicorn worker.
It serves the same files as ligeiro's ``sentiment`` pipeline (examples/build_text.py):
``tokenizer.json``, the MiniLM encoder and the logistic-regression head, so both servers
do the same work per text.

Two settings keep the comparison fair to this server rather than to ligeiro:

- the tokenizer pads nothing and truncates at 256 tokens, as ligeiro's tokenizer model
  does (the shipped ``tokenizer.json`` would pad every text to 128 tokens);
- each ONNX Runtime session runs one intra-op thread, the one core both servers are
  pinned to (by default ORT starts a thread per core and they would fight over it).

The handler is a plain ``def``, as FastAPI advises for blocking calls: it runs on the
thread pool.

Run::

    TEXT_MODELS=examples/models uvicorn benchmarks.baselines.fastapi_text:app --workers 1
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel
from tokenizers import Tokenizer

MODELS = Path(os.environ.get("TEXT_MODELS", "examples/models"))
LABELS = ["negative", "positive"]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


tokenizer = Tokenizer.from_file(str(MODELS / "text-tokenizer" / "1" / "tokenizer.json"))
tokenizer.no_padding()
tokenizer.enable_truncation(max_length=256)
encoder = _session(MODELS / "minilm-encoder" / "1" / "model.onnx")
head = _session(MODELS / "sentiment-head" / "1" / "model.onnx")

app = FastAPI(title="sentiment")


class Text(BaseModel):
    """The seed's request body."""

    inputs: str


class Prediction(BaseModel):
    """The class name and the probability of each class."""

    label: str
    probabilities: dict[str, float]


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/age")
def predict(text: Text) -> Prediction:
    encoding = tokenizer.encode(text.inputs)
    feeds = {
        "input_ids": np.array([encoding.ids], dtype=np.int64),
        "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
        "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
    }
    (embedding,) = encoder.run(["sentence_embedding"], feeds)
    labels, probabilities = head.run(None, {"sentence_embedding": embedding})
    return Prediction(
        label=LABELS[int(labels[0])],
        probabilities={name: float(p) for name, p in zip(LABELS, probabilities[0], strict=True)},
    )
