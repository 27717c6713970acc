"""Python models and pipelines, served over HTTP and gRPC on real sockets.

The repository: ``scale`` (a Python model that halves its input), ``iris`` (the ONNX
example), ``both`` (a batched pipeline scale → iris), ``shout`` (a Python text model),
and broken ones that must be reported, never fatal.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ligeiro import Engine
from ligeiro.client import AsyncClient, AsyncGrpcClient, Client, GrpcClient
from ligeiro.errors import InferenceError, InvalidInputError
from tests.conftest import IRIS_REQUEST, Server, start_server

SCALE_CONFIG = """
platform = "python"
parameters = { factor = 2.0 }
[[inputs]]
name = "raw"
datatype = "FP32"
shape = [-1, 4]
[[outputs]]
name = "float_input"
datatype = "FP32"
shape = [-1, 4]
"""
SCALE_MODEL = """
import numpy as np
import ligeiro

class Model:
    def __init__(self, folder, parameters):
        self.factor = parameters["factor"]
        self.calls = []

    def predict(self, inputs):
        x = inputs["raw"]
        if (x < 0).any():
            raise ligeiro.InvalidInputError(f"row {int(np.argmax((x < 0).any(axis=1)))}: negative")
        if (x > 1000).any():
            raise ValueError("too big to handle")
        return {"float_input": (x / self.factor).astype(np.float32)}
"""
BOTH_CONFIG = """
platform = "pipeline"
labels = ["setosa", "versicolor", "virginica"]
[[steps]]
model = "scale"
[[steps]]
model = "iris"
version = 1
[batching]
max_batch_size = 16
"""
SHOUT_CONFIG = """
platform = "python"
[[inputs]]
name = "text"
datatype = "BYTES"
shape = [-1]
[[outputs]]
name = "loud"
datatype = "BYTES"
shape = [-1]
[[outputs]]
name = "length"
datatype = "INT64"
shape = [-1]
[batching]
max_batch_size = 32
"""
SHOUT_MODEL = """
import numpy as np

class Model:
    def __init__(self, folder, parameters):
        pass

    def predict(self, inputs):
        texts = [t.decode("utf-8") for t in inputs["text"]]  # BYTES come as bytes
        loud = np.array([t.upper() for t in texts], dtype=object)
        return {"loud": loud, "length": np.array([len(t) for t in texts], dtype=np.int64)}
"""
# A setosa, doubled: the pipeline halves it back before iris sees it.
DOUBLED = np.array([[10.2, 7.0, 2.8, 0.4]], dtype=np.float32)


def _model(root: Path, name: str, config: str, script: str | None = None) -> Path:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.toml").write_text(config)
    if script is not None:
        (root / name / "1" / "model.py").write_text(script)
    return root / name


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Path:
    root = tmp_path_factory.mktemp("pipelines")
    shutil.copytree(examples / "iris", root / "iris")
    _model(root, "scale", SCALE_CONFIG, SCALE_MODEL)
    _model(root, "both", BOTH_CONFIG)
    _model(root, "shout", SHOUT_CONFIG, SHOUT_MODEL)
    # Broken: each is reported with its reason, the others serve.
    _model(root, "noscript", SCALE_CONFIG)
    _model(root, "badimport", SCALE_CONFIG, "import no_such_module_here\n")
    _model(root, "noclass", SCALE_CONFIG, "x = 1\n")
    _model(root, "initfails", SCALE_CONFIG, SCALE_MODEL.replace('parameters["factor"]', "1 / 0"))
    _model(root, "undeclared", 'platform = "python"\n', SCALE_MODEL)
    _model(root, "nosuchstep", 'platform = "pipeline"\n[[steps]]\nmodel = "ghost"\n')
    _model(root, "wide", SCALE_CONFIG.replace("[-1, 4]", "[-1, 5]"), SCALE_MODEL)
    _model(
        root,
        "mismatch",
        'platform = "pipeline"\n[[steps]]\nmodel = "wide"\n[[steps]]\nmodel = "iris"\n',
    )
    _model(
        root,
        "misnamed",
        'platform = "pipeline"\n[[steps]]\nmodel = "scale"\n'
        '[[outputs]]\nname = "nowhere"\ndatatype = "FP32"\nshape = [-1, 4]\n',
    )
    _model(root, "stepless", 'platform = "python"\n[[steps]]\nmodel = "scale"\n')
    return root


@pytest.fixture(scope="module")
def srv(root: Path) -> Iterator[Server]:
    server = start_server(root, "--threads", "1")
    yield server
    server.stop()


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, srv: Server) -> Iterator[Client | GrpcClient]:
    if request.param == "http":
        with Client(f"http://{srv.host}:{srv.port}") as http:
            yield http
    else:
        with GrpcClient(srv.grpc_target) as grpc:
            yield grpc


def test_pipeline_equals_its_steps_in_process(root: Path, client: Client | GrpcClient) -> None:
    rows = np.abs(np.random.default_rng(7).normal(4, 2, size=(12, 4))).astype(np.float32)
    with Engine.from_repository(root) as engine:
        halved = engine.infer("scale", {"raw": rows})["float_input"]
        direct = engine.infer("iris", {"float_input": halved})
    served = client.infer("both", {"raw": rows})
    np.testing.assert_array_equal(served["output_label"], direct["output_label"])
    np.testing.assert_allclose(served["output_probability"], direct["output_probability"], atol=0)


def test_pipeline_signature(srv: Server) -> None:
    meta = srv.get("/v2/models/both").json()
    assert meta["platform"] == "ensemble"  # Triton's names: ensemble, python
    assert srv.get("/v2/models/scale").json()["platform"] == "python"
    assert meta["inputs"] == [{"name": "raw", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["output_label", "output_probability"]
    answer = srv.post("/v1/models/both:predict", {"instances": [DOUBLED[0].tolist()]})
    assert answer.status == 200, answer.body
    assert answer.json()["predictions"][0]["label"] == "setosa"


def test_user_errors_name_the_pipeline_and_step(srv: Server, client: Client | GrpcClient) -> None:
    with pytest.raises(
        InvalidInputError, match=r"pipeline 'both' step 0 \('scale'\): row 0: negative"
    ):
        client.infer("both", {"raw": -DOUBLED})
    with pytest.raises(
        InferenceError,
        match=r"pipeline 'both' step 0 \('scale'\): model 'scale': predict failed: "
        r"ValueError: too big to handle \(.*model.py:\d+\)",
    ):
        client.infer("both", {"raw": DOUBLED * 1000})
    # The server goes on serving everyone.
    assert client.infer("both", {"raw": DOUBLED})["output_label"].tolist() == [0]
    assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).status == 200


def test_user_error_statuses(srv: Server) -> None:
    request = {
        "inputs": [{"name": "raw", "shape": [1, 4], "datatype": "FP32", "data": [-1, 0, 0, 0]}]
    }
    assert srv.post("/v2/models/scale/infer", request).status == 400
    request["inputs"][0]["data"] = [5000, 0, 0, 0]
    answer = srv.post("/v2/models/scale/infer", request)
    assert answer.status == 500
    assert "model 'scale': predict failed: ValueError: too big to handle" in answer.json()["error"]
    assert "Traceback" in srv.output()  # the traceback is logged for whoever owns the code


def test_text_model_over_both_transports(client: Client | GrpcClient) -> None:
    texts = np.array(["olá", "hola", "hello"], dtype=object)
    answer = client.infer("shout", {"text": texts})
    assert answer["loud"].tolist() in (["OLÁ", "HOLA", "HELLO"], [b"OL\xc3\x81", b"HOLA", b"HELLO"])
    assert answer["length"].tolist() == [3, 4, 5]


def test_friendly_text_requests(srv: Server) -> None:
    one = srv.post("/v1/models/shout:predict", {"inputs": "olá"})
    assert one.status == 200, one.body
    assert one.json() == {"loud": "OLÁ", "length": 3}
    many = srv.post("/v1/models/shout:predict", {"inputs": ["a", "bb"]})
    assert many.json() == {"predictions": [{"loud": "A", "length": 1}, {"loud": "BB", "length": 2}]}
    for body, message in (
        ({"inputs": 3}, "'inputs' must be a string or a non-empty list of strings, got int"),
        (
            {"inputs": []},
            "'inputs' must be a string or a non-empty list of strings, got an empty list",
        ),
        ({"inputs": ["ok", 4]}, "inputs[1]: expected a string, got int 4"),
        ({"inputs": "x", "extra": 1}, "unknown key 'extra'; a text request has only 'inputs'"),
    ):
        answer = srv.post("/v1/models/shout:predict", body)
        assert answer.status == 400, body
        assert answer.json()["error"] == message


def test_concurrent_text_requests_each_get_their_own_answer(srv: Server) -> None:
    texts = [f"sentence number {i}" for i in range(48)]

    async def burst() -> list[dict[str, np.ndarray]]:
        async def one(i: int) -> dict[str, np.ndarray]:
            client = (
                AsyncClient(f"http://{srv.host}:{srv.port}")
                if i % 2
                else AsyncGrpcClient(srv.grpc_target)
            )
            try:
                return await client.infer("shout", {"text": np.array([texts[i]], dtype=object)})
            finally:
                await client.aclose()

        return await asyncio.gather(*(one(i) for i in range(len(texts))))

    answers = asyncio.run(burst())
    for text, answer in zip(texts, answers, strict=True):
        loud = answer["loud"][0]
        assert (loud.decode() if isinstance(loud, bytes) else loud) == text.upper()
        assert answer["length"].tolist() == [len(text)]


def test_load_errors_are_reported(srv: Server, root: Path) -> None:
    # Paths relative to the repository: the server's own are not for clients (the log
    # keeps them).
    expected = {
        "noscript": "noscript/1/model.py: not found (a Python model needs model.py)",
        "badimport": "badimport/1/model.py: import failed: ModuleNotFoundError: "
        "No module named 'no_such_module_here'",
        "noclass": "noclass/1/model.py: defines no class Model",
        "initfails": "initfails/1/model.py: Model() failed: ZeroDivisionError: "
        "division by zero",
        "undeclared": "undeclared/config.toml: a Python model must declare its "
        "[[inputs]] and [[outputs]]",
        "nosuchstep": "nosuchstep/config.toml: steps[0] 'ghost': unknown model 'ghost'",
        "mismatch": "mismatch/config.toml: step 'iris' takes 'float_input' as "
        "float32 [-1, 4], but step 'wide' gives float32 [-1, 5]",
        "misnamed": "misnamed/config.toml: output 'nowhere' is given by no step; "
        "the steps give float_input",
        "stepless": "stepless/config.toml: [[steps]] belong to platform = 'pipeline', "
        "not 'python'",
    }
    for name, reason in expected.items():
        answer = srv.get(f"/v2/models/{name}")
        assert answer.status == 503, name
        error = answer.json()["error"]
        assert error.startswith(f"model {name!r} is not ready: {reason}"), error
    assert srv.get("/v2/models/both/ready").status == 200
