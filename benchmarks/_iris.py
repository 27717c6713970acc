"""The iris model that most benchmarks serve: its files, its row, and a right answer.

The seed article's pipeline (SimpleImputer -> StandardScaler -> LogisticRegression on
iris) as ONNX in ``examples/models/iris`` and as the baseline's pickle in ``.bench/``,
both built by ``examples/build_iris.py`` when missing; the seed's row (an Iris setosa,
class 0) as the seed's JSON, as V2 JSON and as a gRPC ``ModelInferRequest``; and the
checks that an answer names that class.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Final

import numpy as np

from ._harness import MODELS, ROOT, WORK_DIR

__all__ = [
    "EXPECTED_LABEL",
    "IRIS_REPOSITORY",
    "ONNX_MODEL",
    "PACKAGES",
    "PICKLE",
    "SEED_PAYLOAD",
    "V2_BODY",
    "V2_JSON",
    "V2_PAYLOAD",
    "ensure_models",
    "grpc_request",
    "names_setosa",
    "v2_predicts_class_0",
]

ONNX_MODEL: Final = MODELS / "iris" / "1" / "model.onnx"
PICKLE: Final = WORK_DIR / "iris.joblib"
# ligeiro serves a repository holding iris alone (a link to examples/models/iris), so its
# memory and start-up are one model's, as the baselines' are.
IRIS_REPOSITORY: Final = WORK_DIR / "iris-repository"
BUILD_SCRIPT: Final = ROOT / "examples" / "build_iris.py"
# The versions an iris report records.
PACKAGES: Final = (
    "ligeiro", "onnxruntime", "numpy", "msgspec", "uvloop", "httptools", "granian",
    "fastapi", "starlette", "pydantic", "uvicorn", "scikit-learn", "joblib",
)  # fmt: skip

# The seed's payload: an Iris setosa from the dataset's first row, so every server must
# answer class 0 / "iris-setosa".
SEED_PAYLOAD: Final = {
    "sepal_length": 5.1,
    "sepal_width": 3.5,
    "petal_length": 1.4,
    "petal_width": 0.2,
}
V2_PAYLOAD: Final = {
    "inputs": [
        {"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}
V2_JSON: Final = json.dumps(V2_PAYLOAD).encode()  # the seed's iris row, as json.dumps writes it
V2_BODY: Final = (  # the same, without spaces
    b'{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
)
ROW: Final = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
EXPECTED_LABEL: Final = "iris-setosa"
OTHER_LABELS: Final = frozenset({"iris-versicolor", "iris-virginica"})


def _string_values(document: object) -> list[str]:
    """Every string value (not key) in a decoded JSON document."""
    if isinstance(document, str):
        return [document]
    if isinstance(document, dict):
        document = list(document.values())
    if isinstance(document, list):
        return [text for item in document for text in _string_values(item)]
    return []


def names_setosa(answer: object) -> bool:
    """The answer names iris-setosa and no other class as a value.

    Class names may also appear as keys of a probability map; only values count, so
    the check does not depend on how a server lays out its probabilities.
    """
    values = set(_string_values(answer))
    return EXPECTED_LABEL in values and not values & OTHER_LABELS


def v2_predicts_class_0(answer: object) -> bool:
    """The V2 response's ``output_label`` tensor holds class 0."""
    outputs = answer.get("outputs", []) if isinstance(answer, dict) else []
    return any(
        output.get("name") == "output_label" and output.get("data", [None])[0] == 0
        for output in outputs
        if isinstance(output, dict)
    )


def grpc_request() -> bytes:
    """The ModelInferRequest for one iris row, framed as gRPC sends it on the wire."""
    from ligeiro.protocol._generated import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(
        model_name="iris",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="float_input", datatype="FP32", shape=[1, 4])
        ],
        raw_input_contents=[ROW.tobytes()],
    )
    payload = request.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def ensure_models() -> None:
    """Link the iris-only repository, and build the ONNX model and the baseline's pickle
    when missing or older than the script.

    When the ONNX model already exists, the pickle is built beside a throw-away copy
    under ``.bench/`` rather than rewriting ``examples/models`` under a running server.
    The training is seeded, so the two hold the same fitted pipeline: the ONNX bytes
    differ between builds, but labels and probabilities agree with the pickle's.
    """
    link = IRIS_REPOSITORY / "iris"
    if not link.is_symlink():
        IRIS_REPOSITORY.mkdir(parents=True, exist_ok=True)
        link.symlink_to(MODELS / "iris", target_is_directory=True)
    is_fresh = PICKLE.exists() and PICKLE.stat().st_mtime >= BUILD_SCRIPT.stat().st_mtime
    if ONNX_MODEL.exists() and is_fresh:
        return
    out = WORK_DIR / "models" if ONNX_MODEL.exists() else MODELS
    command = [sys.executable, str(BUILD_SCRIPT), "--out", str(out), "--pickle", str(PICKLE)]
    print(f"building the iris model: {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
