"""Hybrid serving (federated learning) on Flower: each round's model, gated, served.

Needs the ``federated`` extra (``pip install 'ligeiro[federated]'``): Flower for the
federation, onnx for the export. See ``docs/federated.md``.

- ``Classifier``: softmax regression or a small MLP, trained by its parameters, exported
  to ONNX with a fidelity check.
- ``Publisher``: writes each round's model into a repository as the next version,
  serves it to a canary share, then promotes or rejects it.
- ``ServingStrategy``: wraps a Flower strategy (``FedAvg``, ``FedProx``) with the above.
- ``client_app`` and ``Partition``: the device's Flower ``ClientApp``.
"""

from __future__ import annotations

try:
    import flwr as _flwr  # noqa: F401
    import onnx as _onnx  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"ligeiro.federated needs Flower and onnx ({exc.name} is missing): "
        "pip install 'ligeiro[federated]'"
    ) from None

from .client import Partition as Partition
from .client import client_app as client_app
from .model import Classifier as Classifier
from .publisher import Publisher as Publisher
from .publisher import RoundRecord as RoundRecord
from .strategy import ServingStrategy as ServingStrategy

__all__ = [
    "Classifier",
    "Partition",
    "Publisher",
    "RoundRecord",
    "ServingStrategy",
    "client_app",
]
