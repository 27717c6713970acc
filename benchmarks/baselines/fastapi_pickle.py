"""The seed article's "traditional" server: FastAPI serving the pickled sklearn pipeline.

Written as the article's first API would be: the GridSearchCV's best pipeline
(SimpleImputer → StandardScaler → LogisticRegression) loaded with joblib at import, a
pydantic body, and ``predict`` then ``predict_proba`` on a one-row numpy array (the
pipeline is fitted on arrays, so it expects no column names). The handler is a plain
``def``, as FastAPI advises for blocking calls: it runs on the thread pool.

Run (the benchmark builds the pickle with ``examples/build_iris.py --pickle``)::

    IRIS_PICKLE=.bench/iris.joblib uvicorn benchmarks.baselines.fastapi_pickle:app --workers 1
"""

from __future__ import annotations

import os

import joblib
import numpy as np

from ._iris_api import IrisFeatures, Prediction, create_app

model = joblib.load(os.environ.get("IRIS_PICKLE", ".bench/iris.joblib"))
app = create_app()


@app.post("/predict")
def predict(features: IrisFeatures) -> Prediction:
    row = np.array([features.row()])
    label = int(model.predict(row)[0])
    probabilities = model.predict_proba(row)[0]
    return Prediction.from_scores(label, probabilities)
