"""The seed article's second server: FastAPI serving the ONNX export with onnxruntime.

Written as the article's Python ONNX API would be: one ``InferenceSession`` with default
options, a pydantic body turned into a ``[1, 4]`` float32 array, and one ``session.run``
that returns both outputs (``output_label`` and the ``[N, 3]`` ``output_probability``,
as ``examples/build_iris.py`` exports it without ZipMap). The handler is a plain ``def``,
as FastAPI advises for blocking calls: it runs on the thread pool.

Run::

    IRIS_ONNX=examples/models/iris/1/model.onnx \
        uvicorn benchmarks.baselines.fastapi_onnx:app --workers 1
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as rt

from ._iris_api import IrisFeatures, Prediction, create_app

session = rt.InferenceSession(
    os.environ.get("IRIS_ONNX", "examples/models/iris/1/model.onnx"),
    providers=["CPUExecutionProvider"],
)
input_name = session.get_inputs()[0].name
app = create_app()


@app.post("/predict")
def predict(features: IrisFeatures) -> Prediction:
    labels, probabilities = session.run(None, {input_name: np.array([features.row()], np.float32)})
    return Prediction.from_scores(int(labels[0]), probabilities[0])
