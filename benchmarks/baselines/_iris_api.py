"""What the seed's two FastAPI servers share: the request and response models.

The seed article (003) posts ``{"sepal_length": ..., "sepal_width": ..., "petal_length":
..., "petal_width": ...}`` to ``POST /predict`` and names classes as its Go server's
``MAPPED_LABELS`` does. Keeping these in one place makes the two baselines differ only in
how they run the model, which is the comparison the article makes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from pydantic import BaseModel

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["LABELS", "IrisFeatures", "Prediction", "create_app"]

LABELS = ["iris-setosa", "iris-versicolor", "iris-virginica"]


class IrisFeatures(BaseModel):
    """The seed's request body: the four iris measurements, in centimetres."""

    sepal_length: float
    sepal_width: float
    petal_length: float
    petal_width: float

    def row(self) -> list[float]:
        """The features in the column order the model was trained on."""
        return [self.sepal_length, self.sepal_width, self.petal_length, self.petal_width]


class Prediction(BaseModel):
    """The predicted class name and the probability of each class."""

    label: str
    probabilities: dict[str, float]

    @classmethod
    def from_scores(cls, label: int, probabilities: Sequence[float]) -> Prediction:
        return cls(
            label=LABELS[label],
            probabilities={name: float(p) for name, p in zip(LABELS, probabilities, strict=True)},
        )


def create_app() -> FastAPI:
    """A FastAPI app with the ``GET /health`` route the benchmark polls for readiness."""
    app = FastAPI(title="iris")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
