"""Hugging Face folders → text pipelines (``ligeiro convert FOLDER --task ...``), served.

Each test builds a tiny random BERT with transformers' own classes (no download),
saves it with ``save_pretrained``, converts the folder and serves the pipeline: the
served embeddings and labels are compared with transformers' (and sentence-transformers')
own output on a few sentences.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ligeiro import Engine
from ligeiro.cli import main
from ligeiro.convert.text import convert_text_folder
from ligeiro.errors import ConversionError
from ligeiro.repository.config import load_config
from tests.conftest import start_server

torch = pytest.importorskip("torch", reason="needs torch: pip install 'ligeiro[text-build]'")
transformers = pytest.importorskip("transformers", reason="needs ligeiro[text-build]")

WORDS = (
    "the a quick brown fox jumps over lazy dog i love you like hate this film was good bad "
    "very not service food slow great awful"
).split()
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "i love this film",
    "the service was very slow and the food was awful",
    "not good",
    " ".join(["the quick brown fox"] * 30),  # past max_position_embeddings: cut
]
LABELS = ["negative", "neutral", "positive"]
MIN_COSINE = 0.9999


def _bert_folder(path: Path, *, classes: list[str] | None = None) -> Path:
    """A tiny random BERT (and its WordPiece tokenizer) saved with save_pretrained."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ed"]
    tokenizer = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    if classes is None:
        model = transformers.BertModel(config)
    else:
        config.id2label = dict(enumerate(classes))
        config.label2id = {c: i for i, c in enumerate(classes)}
        model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _transformers_outputs(folder: Path, texts: list[str], *, classify: bool) -> Any:
    """transformers itself: its tokenizer (padded, cut at 64 tokens) and model."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    kind = (
        transformers.AutoModelForSequenceClassification if classify else transformers.AutoModel
    )
    model = kind.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(**batch)
    if classify:
        return torch.softmax(out.logits, dim=-1).numpy()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((out.last_hidden_state * mask).sum(1) / mask.sum(1)).numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _v2_text(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def test_cli_feature_extraction_served_equals_transformers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _bert_folder(tmp_path / "tiny-bert")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    repo = tmp_path / "repo"
    main(["convert", str(source), "--task", "feature-extraction", "--data",
          str(tmp_path / "texts.txt"), "--out", str(repo / "tiny")])  # fmt: skip
    out = capsys.readouterr().out
    assert "PASSED" in out
    assert "mean pooling" in out
    assert sorted(p.name for p in repo.iterdir()) == ["tiny", "tiny-encoder", "tiny-tokenizer"]
    report = json.loads((repo / "tiny-encoder" / "parity.json").read_text())
    assert report["batches"]["sample texts"]["shape"] == [5, 64]  # the long text was cut

    server = start_server(repo, "--threads", "1")
    try:
        response = server.post("/v2/models/tiny/infer", _v2_text(TEXTS))
        assert response.status == 200, response.body
        (output,) = json.loads(response.body)["outputs"]
    finally:
        server.stop()
    assert output["name"] == "sentence_embedding"
    assert output["shape"] == [5, 32]
    served = np.array(output["data"], dtype=np.float32).reshape(5, 32)
    expected = _transformers_outputs(source, TEXTS, classify=False)
    assert _cosines(served, expected).min() >= MIN_COSINE
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_sentence_transformers_folder_pooling_and_normalize(tmp_path: Path) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    source = _bert_folder(tmp_path / "st")
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True})
    )
    (source / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    layout = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    modules = [
        {"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{kind}"}
        for i, (p, kind) in enumerate(layout)
    ]
    (source / "modules.json").write_text(json.dumps(modules))
    result = convert_text_folder(source, tmp_path / "repo" / "st", task="feature-extraction")
    assert "CLS pooling + L2 normalisation" in result.report["reference"]
    assert load_config(result.tokenizer).parameters["max_length"] == 16

    with Engine.from_repository(tmp_path / "repo") as engine:
        served = engine.infer("st", {"text": np.array(TEXTS, dtype=object)})["sentence_embedding"]
    reference = sentence_transformers.SentenceTransformer(str(source), device="cpu")
    expected = reference.encode(TEXTS, convert_to_numpy=True)
    assert _cosines(served, expected).min() >= MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_text_classification_labels_equal_transformers(tmp_path: Path) -> None:
    source = _bert_folder(tmp_path / "clf", classes=LABELS)
    repo = tmp_path / "repo"
    result = convert_text_folder(source, repo / "clf", task="text-classification", texts=TEXTS)
    assert result.model == repo / "clf-classifier"
    config = load_config(repo / "clf")
    assert config.labels == LABELS
    assert config.label_output == "label"
    assert config.probability_output == "probabilities"

    with Engine.from_repository(repo) as engine:
        served = engine.infer("clf", {"text": np.array(TEXTS, dtype=object)})
    probabilities = _transformers_outputs(source, TEXTS, classify=True)
    assert served["label"].tolist() == probabilities.argmax(axis=1).tolist()
    np.testing.assert_allclose(served["probabilities"], probabilities, atol=1e-5)


def test_folder_without_task_and_unsupported_modules_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "folder"
    source.mkdir()
    (tmp_path / "rows.csv").write_text("a\n1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(source), "--data", str(tmp_path / "rows.csv"),
              "--out", str(tmp_path / "repo" / "x")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "--task feature-extraction" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(source), "--task", "feature-extraction", "--trust-pickle",
              "--out", str(tmp_path / "repo" / "x")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "--trust-pickle: not for --task" in capsys.readouterr().err

    (source / "config.json").write_text("{}")
    (source / "modules.json").write_text(
        json.dumps([{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}])
    )
    with pytest.raises(ConversionError, match=r"module 'sentence_transformers.models.Dense'"):
        convert_text_folder(source, tmp_path / "repo" / "x", task="feature-extraction")
    with pytest.raises(ConversionError, match="no id2label"):
        convert_text_folder(source, tmp_path / "repo" / "x", task="text-classification")
    assert not (tmp_path / "repo").exists()
