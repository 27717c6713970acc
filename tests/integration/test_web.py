"""/openapi.json validates (openapi-spec-validator) and follows a hot reload, /docs and / are
served from the package (and turned off by --no-ui), and the openai client's embeddings equal
the V2 minilm output; embeddings errors are 400s that say what is wrong."""

from __future__ import annotations

import base64
import shutil
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.conftest import start_server

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Server


def test_openapi_document_validates_and_has_per_model_schemas(server: Server) -> None:
    from openapi_spec_validator import validate

    response = server.get("/openapi.json")
    assert response.status == 200
    document = response.json()
    validate(document)
    predict = document["paths"]["/v1/models/iris:predict"]["post"]
    named = predict["requestBody"]["content"]["application/json"]["schema"]["anyOf"][0]
    assert list(named["properties"]) == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    answer = predict["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"][0]
    assert answer["properties"]["label"] == {"enum": ["iris-setosa", "iris-versicolor", "iris-virginica"]}
    # Swagger UI's Authorize: an inference bearer token (optional until the server has
    # tokens), the admin token on the repository API; probes and pages need none.
    schemes = document["components"]["securitySchemes"]
    assert schemes["inferenceToken"] == schemes["inferenceToken"] | {"type": "http", "scheme": "bearer"}
    assert document["security"] == [{}, {"inferenceToken": []}]
    assert document["paths"]["/v2/health/ready"]["get"]["security"] == []
    assert document["paths"]["/"]["get"]["security"] == []


def test_pages_are_served_from_the_package(server: Server) -> None:
    for path, kind in (("/", "text/html"), ("/docs", "text/html"), ("/ui/docs.js", "text/javascript")):
        response = server.get(path)
        assert response.status == 200, path
        assert response.headers["content-type"].startswith(kind)
    page = server.get("/docs")
    assert b"/ui/swagger-ui/swagger-ui-bundle.js" in page.body
    assert b"http" not in page.body.replace(b'href="/', b"")  # nothing from another origin


def test_openai_client_embeddings_equal_v2_output(server: Server) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://{server.host}:{server.port}/v1", api_key="unused")
    texts = ["The food was delicious.", "A terrible film."]
    answer = client.embeddings.create(model="minilm", input=texts)
    client.close()  # its pooled connection, else an unclosed-socket warning at some gc pass
    v2 = server.post(
        "/v2/models/minilm/infer",
        {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]},
    ).json()["outputs"][0]
    expected = np.array(v2["data"], dtype=np.float32).reshape(v2["shape"])
    got = np.array([d.embedding for d in answer.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert answer.usage.prompt_tokens == 7


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "minilm", "input": "a", "dimensions": 128}, 400,
         "model 'minilm' gives 384 dimensions, got dimensions=128"),
        ({"model": "minilm", "input": "a", "encoding_format": "int8"}, 400,
         "'encoding_format' must be 'float' or 'base64', got 'int8'"),
        ({"model": "minilm", "input": []}, 400, "'input' must be a string or a non-empty list"),
        ({"model": "minilm", "input": [[101, 2023]]}, 400, "token arrays are not supported"),
        ({"model": "minilm", "input": "a", "extra": 1}, 400, "unknown key 'extra'"),
        ({"model": "iris", "input": "a"}, 400, "model 'iris' does not embed text"),
        ({"model": "nope", "input": "a"}, 404, "nope"),
    ],
)  # fmt: skip
def test_embeddings_errors_are_precise(
    server: Server, body: dict[str, object], status: int, message: str
) -> None:
    answer = server.post("/v1/embeddings", body)
    assert answer.status == status, answer.body
    assert message in answer.json()["error"]


def test_embeddings_base64_equals_float(server: Server) -> None:
    floats = server.post("/v1/embeddings", {"model": "minilm", "input": ["a cat", "a dog"]}).json()
    packed = server.post(
        "/v1/embeddings",
        {"model": "minilm", "input": ["a cat", "a dog"], "encoding_format": "base64"},
    ).json()
    for plain, encoded in zip(floats["data"], packed["data"], strict=True):
        vector = np.frombuffer(base64.b64decode(encoded["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(vector, np.array(plain["embedding"], dtype=np.float32))
    assert [d["index"] for d in packed["data"]] == [0, 1]


def test_openapi_follows_a_hot_reload(repository: Path) -> None:
    srv = start_server(repository, "--model-control", "poll")
    try:
        paths = srv.get("/openapi.json").json()["paths"]
        assert "/v1/models/iris:predict" in paths
        assert "/v1/models/flower:predict" not in paths
        staging = repository / ".staging"
        shutil.copytree(repository / "iris", staging)
        staging.rename(repository / "flower")  # the whole folder at once
        deadline = time.monotonic() + 30
        while "/v1/models/flower:predict" not in paths:
            assert time.monotonic() < deadline, "flower never appeared in /openapi.json"
            time.sleep(0.1)
            paths = srv.get("/openapi.json").json()["paths"]
        assert "/v2/models/flower/versions/{model_version}/infer" in paths
        assert [m["name"] for m in srv.get("/ui/status").json()["models"]] == ["flower", "iris"]
        shutil.rmtree(repository / "flower")
        while "/v1/models/flower:predict" in paths:
            assert time.monotonic() < deadline + 30, "flower never left /openapi.json"
            time.sleep(0.1)
            paths = srv.get("/openapi.json").json()["paths"]
    finally:
        srv.stop()


def test_no_ui_turns_off_the_pages_but_not_the_document(repository: Path) -> None:
    srv = start_server(repository, "--no-ui")
    try:
        for path in ("/", "/docs", "/ui/status", "/ui/dashboard.js"):
            answer = srv.get(path)
            assert answer.status == 404, (path, answer.status)
        document = srv.get("/openapi.json")
        assert document.status == 200
        paths = document.json()["paths"]
        assert "/v1/models/iris:predict" in paths
        assert "/" not in paths and "/docs" not in paths  # documents only what it serves
    finally:
        srv.stop()


def test_repository_index_body_of_non_json_whitespace_is_400(server: Server) -> None:
    """Found by schemathesis: a vertical tab was read as an empty body."""
    answer = server.request("POST", "/v2/repository/index", b"\x0b")
    assert answer.status == 400
    assert answer.json()["error"].startswith("invalid index request: JSON is malformed")
    assert server.request("POST", "/v2/repository/index", b" \r\n\t").status == 200
