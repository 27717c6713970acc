"""/openapi.json validates (openapi-spec-validator), /docs and / are served from the package,
and the openai client's embeddings equal the V2 minilm output."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
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
