"""The device's side: a Flower ``ClientApp`` that trains on data that never leaves it.

Each round the server sends the served model's parameters (``ServingStrategy`` starts
every round from them); the device trains on its own rows and answers only the new
parameters and its row count. For evaluation it gets the candidate and the served
model and answers their accuracy and loss on its held-out rows. A device that holds the
served model already (the packaged model, ``ligeiro package``; or a version file
downloaded once) reads its parameters with ``Classifier.from_onnx`` to predict offline.

Example:
    >>> from ligeiro.federated import Classifier, Partition, client_app
    >>> def my_rows(context):  # read this device's data, by its node config
    ...     return Partition(x_train, y_train, x_test, y_test)
    >>> app = client_app(Classifier(features=4, classes=3), my_rows, epochs=5)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .strategy import SERVING_KEY

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from .model import Classifier, Params

__all__ = ["Partition", "client_app"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Partition:
    """One device's rows: for training, and held out for evaluation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def client_app(
    model: Classifier,
    load_partition: Callable[[Context], Partition],
    *,
    epochs: int = 5,
    learning_rate: float = 0.1,
    batch_size: int = 16,
    on_update: Callable[[int, Params, Context], Params] | None = None,
) -> ClientApp:
    """A Flower ``ClientApp`` that trains ``model`` on the device's partition.

    Args:
        model: the classifier the server federates.
        load_partition: reads the device's rows (by ``context.node_config``, e.g.
            ``partition-id``); it runs on the device, and its rows never leave it.
        epochs, learning_rate, batch_size: local SGD per round. A FedProx server
            sends ``proximal-mu``, which is applied.
        on_update: changes the parameters before they leave the device (the round
            number, the trained parameters and the context in, parameters out): local
            differential-privacy noise, clipping, or, in tests, a poisoned device.
    """
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        rows = load_partition(context)
        config = message.content["config"]
        server_round = int(config.get("server-round", 0))  # type: ignore[arg-type]
        start = message.content["arrays"].to_numpy_ndarrays()  # type: ignore[union-attr]
        partition = int(context.node_config.get("partition-id", 0))  # type: ignore[arg-type]
        params = model.train(
            start,
            rows.x_train,
            rows.y_train,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            proximal_mu=float(config.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
            seed=server_round * 1000 + partition,
        )
        trained = model.evaluate(params, rows.x_train, rows.y_train)
        if on_update is not None:
            params = on_update(server_round, params, context)
        metrics = MetricRecord(
            {
                "num-examples": len(rows.x_train),
                "loss": trained["loss"],
                "accuracy": trained["accuracy"],
            }
        )
        return Message(
            RecordDict({"arrays": ArrayRecord(params), "metrics": metrics}), reply_to=message
        )

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        rows = load_partition(context)
        candidate = message.content["arrays"].to_numpy_ndarrays()  # type: ignore[union-attr]
        found: dict[str, float | int] = {"num-examples": len(rows.x_test)}
        found.update(model.evaluate(candidate, rows.x_test, rows.y_test))
        if SERVING_KEY in message.content:
            served = message.content[SERVING_KEY].to_numpy_ndarrays()  # type: ignore[union-attr]
            for key, value in model.evaluate(served, rows.x_test, rows.y_test).items():
                found[f"serving-{key}"] = value
        return Message(RecordDict({"metrics": MetricRecord(found)}), reply_to=message)

    return app
