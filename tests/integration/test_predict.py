"""The friendly endpoint, POST /v1/models/{m}:predict, with the seed's payloads."""

from __future__ import annotations

import pytest

from tests.conftest import EXAMPLE_NAMES, Server

SEED = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
LABELS = ["iris-setosa", "iris-versicolor", "iris-virginica"]


def test_seed_bare_object(server: Server) -> None:
    answer = server.post("/v1/models/iris:predict", SEED)
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["label"] == "iris-virginica"
    assert list(body["probabilities"]) == LABELS
    assert body["probabilities"]["iris-virginica"] > 0.9


def test_instances_of_objects_and_lists(server: Server) -> None:
    setosa = {
        "petal_width": 0.2,
        "petal_length": 1.4,
        "sepal_width": 3.5,
        "sepal_length": 5.1,
    }  # any order
    body = server.post(
        "/v1/models/iris:predict", {"instances": [setosa, [6.7, 3.0, 5.2, 2.3]]}
    ).json()
    assert [p["label"] for p in body["predictions"]] == ["iris-setosa", "iris-virginica"]


def test_agrees_with_v2(server: Server) -> None:
    friendly = server.post("/v1/models/iris:predict", SEED).json()
    row = [SEED[k] for k in ("sepal_length", "sepal_width", "petal_length", "petal_width")]
    v2 = server.post(
        "/v2/models/iris/infer",
        {"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": row}]},
    ).json()
    assert list(friendly["probabilities"].values()) == v2["outputs"][1]["data"]
    assert LABELS[v2["outputs"][0]["data"][0]] == friendly["label"]


def test_missing_feature_is_imputed(server: Server) -> None:
    for partial in ({"sepal_length": 6.7, "sepal_width": 3.0}, {**SEED, "petal_width": None}):
        answer = server.post("/v1/models/iris:predict", partial)
        assert answer.status == 200, answer.body
        assert answer.json()["label"] in LABELS
        assert sum(answer.json()["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {**SEED, "colour": 1.0},
            400,
            "unknown feature 'colour'; expected sepal_length, sepal_width, petal_length, petal_width",
        ),
        (
            {**SEED, "sepal_length": "long"},
            400,
            "feature 'sepal_length': expected a number or null, got str 'long'",
        ),
        ({"instances": [[1, 2, 3]]}, 400, "instances[0]: expected 4 values, got 3"),
        (
            {"instances": [[1, 2, "3", 4]]},
            400,
            "instances[0]: value 2: expected a number or null, got str '3'",
        ),
        ({"instances": []}, 400, "'instances' must be a non-empty list"),
        (
            {"instances": ["x"]},
            400,
            "instances[0]: expected an object of features or a list of numbers, got str",
        ),
        ([1, 2, 3, 4], 400, "expected a JSON object"),
    ],
)
def test_errors(server: Server, body: object, status: int, message: str) -> None:
    import json

    answer = server.post("/v1/models/iris:predict", json.dumps(body))
    assert answer.status == status
    assert message in answer.json()["error"]


def test_unknown_model(server: Server) -> None:
    answer = server.post("/v1/models/roses:predict", SEED)
    assert answer.status == 404
    assert answer.json()["error"] == f"unknown model 'roses'; the repository has {EXAMPLE_NAMES}"
