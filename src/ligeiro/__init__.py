"""ligeiro: serve Python-trained models (ONNX) with the latency of a Go or Rust server.

In process, one model folder::

    import ligeiro
    model = ligeiro.load("examples/models/iris")
    print(model.predict([{"sepal_length": 5.1, "sepal_width": 3.5,
                          "petal_length": 1.4, "petal_width": 0.2}]))  # ['iris-setosa']

A whole repository: ``ligeiro.Engine.from_repository("examples/models")``.

As a server: ``ligeiro serve examples/models`` (V2 REST on 127.0.0.1:8000).
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from .errors import ConfigError as ConfigError
from .errors import ConversionError as ConversionError
from .errors import DeadlineExceededError as DeadlineExceededError
from .errors import InferenceError as InferenceError
from .errors import InvalidInputError as InvalidInputError
from .errors import LigeiroError as LigeiroError
from .errors import ModelLoadError as ModelLoadError
from .errors import ModelNotFoundError as ModelNotFoundError
from .errors import ModelNotReadyError as ModelNotReadyError
from .errors import RequestTooLargeError as RequestTooLargeError
from .errors import ServerOverloadedError as ServerOverloadedError
from .errors import UntrustedModelError as UntrustedModelError

if TYPE_CHECKING:
    from .engine import Engine as Engine
    from .engine import InferenceResult as InferenceResult
    from .model import Model as Model
    from .model import load as load


def __getattr__(name: str) -> object:
    # The engine pulls in ONNX Runtime (~0.15 s); ``ligeiro.client`` and the CLI's
    # one-shot commands must not pay for it, so it is imported on first use.
    if name in ("Engine", "InferenceResult"):
        from . import engine

        return getattr(engine, name)
    if name in ("Model", "load"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'ligeiro' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "ConfigError",
    "ConversionError",
    "DeadlineExceededError",
    "Engine",
    "InferenceError",
    "InferenceResult",
    "InvalidInputError",
    "LigeiroError",
    "Model",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "RequestTooLargeError",
    "ServerOverloadedError",
    "UntrustedModelError",
    "__version__",
    "load",
]
