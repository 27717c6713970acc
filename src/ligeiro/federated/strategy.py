"""A Flower strategy whose every round's global model becomes a gated ligeiro version.

``ServingStrategy`` wraps a Flower strategy (``FedAvg``, ``FedProx``, or any other of
``flwr.serverapp.strategy``) and leaves aggregation to it. Around it, per round:

- training starts from the **served** model's parameters (not from the last aggregate:
  a rejected round is forgotten);
- the aggregate is exported to ONNX (checked for fidelity) and published as the next
  version, serving a canary share (``Publisher.publish``);
- federated evaluation sends the devices both the candidate and the served model; each
  reports both on its held-out rows, and Flower averages them (weighted by rows);
- the gate promotes the candidate when its metric is no worse than the served one's by
  more than ``tolerance``; otherwise the candidate is unloaded and disabled with the
  reason (``Publisher.reject``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, final

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from ..errors import ConversionError
from .publisher import RoundRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import numpy as np
    from flwr.serverapp import Grid

    from .model import Classifier
    from .publisher import Publisher

__all__ = ["SERVING_KEY", "ServingStrategy"]

logger = logging.getLogger(__name__)

# Where an evaluation message carries the served model beside the candidate.
SERVING_KEY = "serving"


def _rows(message: Message, key: str) -> int:
    metrics = next(iter(message.content.metric_records.values()), MetricRecord())
    return int(metrics.get(key, 0))  # type: ignore[arg-type]


@final
class ServingStrategy(Strategy):
    """Flower strategy ``strategy``, with each round's model published and gated.

    Args:
        strategy: the Flower strategy that samples devices and aggregates.
        publisher: writes versions into the repository and waits for the server.
        model: the classifier the parameters belong to (for the ONNX export).
        sample: rows the export's fidelity check runs on (any inputs; no labels).
        metric: the evaluation metric the gate compares (as the devices report it;
            the served model's is ``serving-<metric>``).
        higher_is_better: ``True`` for accuracy, ``False`` for a loss.
        tolerance: how much worse than the served model a candidate may be.
        on_round: called after each round's decision with its record and the
            candidate's parameters (``None`` when no aggregate was made).
    """

    def __init__(
        self,
        strategy: Strategy,
        publisher: Publisher,
        model: Classifier,
        *,
        sample: np.ndarray,
        metric: str = "accuracy",
        higher_is_better: bool = True,
        tolerance: float = 0.02,
        on_round: Callable[[RoundRecord, list[np.ndarray] | None], None] | None = None,
    ) -> None:
        self.strategy = strategy
        self.publisher = publisher
        self.model = model
        self.sample = sample
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.tolerance = tolerance
        self.on_round = on_round
        self.weighted_by_key = getattr(strategy, "weighted_by_key", "num-examples")
        self.serving_arrays = ArrayRecord(model.from_onnx(publisher.model_file(publisher.serving)))
        self.records: list[RoundRecord] = []
        self._candidate: list[np.ndarray] | None = None
        self._record: RoundRecord | None = None

    def summary(self) -> None:
        logger.info(
            "serving %s version %d; gate: %s %s tolerance %.3f",
            self.publisher.model,
            self.publisher.serving,
            self.metric,
            "higher is better" if self.higher_is_better else "lower is better",
            self.tolerance,
        )
        self.strategy.summary()

    # -- training -----------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Every round starts from what is served: a rejected aggregate is not built on.
        return self.strategy.configure_train(server_round, self.serving_arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        valid = [m for m in replies if not m.has_error()]
        record = RoundRecord(
            server_round, len(valid), sum(_rows(m, self.weighted_by_key) for m in valid)
        )
        record.metrics = {f"train-{k}": float(v) for k, v in (metrics or {}).items()}  # type: ignore[arg-type]
        self._record, self._candidate = record, None
        if arrays is None:
            return self._decide(None, "no device returned an update")
        try:
            candidate = self.model.check(arrays.to_numpy_ndarrays())
            onnx_bytes = self.model.to_onnx(candidate, sample=self.sample)
        except (ValueError, ConversionError) as exc:
            return self._decide(None, f"the aggregate is not a valid model: {exc}")
        fidelity = self.model.fidelity(candidate, onnx_bytes, self.sample)
        self.publisher.publish(
            onnx_bytes,
            record,
            {"train_metrics": record.metrics, "fidelity": fidelity.to_dict()},
        )
        self._candidate = candidate
        return arrays, metrics

    def _decide(
        self, metrics: MetricRecord | None, reason: str
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """End a round that made no candidate to evaluate."""
        assert self._record is not None
        self._record.serving = self.publisher.serving
        self._record.reason = reason
        logger.warning("round %d: nothing published: %s", self._record.round, reason)
        self.publisher.log_round(self._record)
        self._finish(None)
        return None, metrics

    # -- evaluation and the gate --------------------------------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self._candidate is None:
            return []
        messages = list(
            self.strategy.configure_evaluate(
                server_round, ArrayRecord(self._candidate), config, grid
            )
        )
        for message in messages:
            message.content[SERVING_KEY] = self.serving_arrays
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        if self._candidate is None or self._record is None:
            return None
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        record = self._record
        reason = self._verdict(metrics)
        if metrics is not None:
            record.metrics.update({k: float(v) for k, v in metrics.items()})  # type: ignore[arg-type]
        if reason is None:
            self.publisher.promote(record)
            self.serving_arrays = ArrayRecord(self._candidate)
        else:
            self.publisher.reject(record, reason)
        self._finish(self._candidate)
        return metrics

    def _verdict(self, metrics: MetricRecord | None) -> str | None:
        """Why the candidate must not serve, or ``None`` when it passes."""
        key, served_key = self.metric, f"serving-{self.metric}"
        if metrics is None or key not in metrics or served_key not in metrics:
            return f"no federated evaluation reported {key!r} and {served_key!r}"
        new, old = float(metrics[key]), float(metrics[served_key])  # type: ignore[arg-type]
        worse = old - new if self.higher_is_better else new - old
        if worse > self.tolerance:
            return (
                f"federated {key} {new:.4f} is worse than the served version's {old:.4f} "
                f"by {worse:.4f} (tolerance {self.tolerance})"
            )
        return None

    def _finish(self, candidate: list[np.ndarray] | None) -> None:
        assert self._record is not None
        self.records.append(self._record)
        if self.on_round is not None:
            self.on_round(self._record, candidate)
        self._candidate, self._record = None, None
