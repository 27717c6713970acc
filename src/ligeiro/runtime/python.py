"""Models written in Python: pre/post-processing and custom code, in the model folder.

A Python model is a version folder holding ``model.py`` with a class ``Model``::

    class Model:
        def __init__(self, folder: Path, parameters: dict[str, object]) -> None:
            ...  # load what the model needs from its version folder

        def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            ...  # a whole batch: first axis = rows

Its ``config.toml`` says ``platform = "python"`` and declares ``[[inputs]]`` and
``[[outputs]]``; ``[parameters]`` is handed to ``__init__``. A BYTES input arrives as
a numpy object array of ``bytes``, as the request carried them (a JPEG, a WAV, UTF-8
text: the model decodes what it expects; V2 JSON strings come UTF-8 encoded). ``predict`` raises
``ligeiro.InvalidInputError`` for input it refuses (a 400 for the client); any other
exception is the model's failure: a 500 naming the model, logged with its traceback,
and the server goes on serving.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import traceback
from typing import TYPE_CHECKING, Any, Protocol, final

import numpy as np

from ..errors import InferenceError, InvalidInputError, LigeiroError, ModelLoadError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from .base import TensorSpec

__all__ = ["MODEL_SCRIPT", "PythonModel", "PythonRuntime"]

logger = logging.getLogger(__name__)

MODEL_SCRIPT = "model.py"


class PythonModel(Protocol):
    """What ``model.py``'s ``Model`` class provides (see the module's docstring)."""

    def __init__(self, folder: Path, parameters: dict[str, Any]) -> None: ...

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _failure(exc: BaseException) -> str:
    """The exception and the line of ``model.py`` it came from."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".py")]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


@final
class PythonRuntime:
    """Loads ``<version>/model.py`` and runs its ``Model.predict`` on whole batches.

    Raises:
        ModelLoadError: no ``model.py``, no ``Model`` class in it, or its import or
            ``__init__`` raised (the message names the file, the exception and its line).
    """

    def __init__(
        self,
        folder: Path,
        *,
        name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self._name = name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        # It reads BYTES as bytes: its BYTES inputs come as bytes, str encoded.
        self.text_inputs: frozenset[str] = frozenset()
        self._bytes_inputs = tuple(s.name for s in self.inputs if s.dtype.kind == "O")
        self._dtypes = {spec.name: spec.dtype for spec in outputs}
        script = folder / MODEL_SCRIPT
        if not script.is_file():
            raise ModelLoadError(f"{script}: not found (a Python model needs {MODEL_SCRIPT})")
        # One module per model version: two versions' model.py must not share state.
        module_name = f"ligeiro_models.{name}.v{folder.name}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, script)
            assert spec is not None
            assert spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ModelLoadError(f"{script}: import failed: {_failure(exc)}") from exc
        model_class = getattr(module, "Model", None)
        if not isinstance(model_class, type):
            raise ModelLoadError(f"{script}: defines no class Model")
        if not callable(getattr(model_class, "predict", None)):
            raise ModelLoadError(f"{script}: class Model has no predict(self, inputs) method")
        try:
            self._model: PythonModel = model_class(folder, dict(parameters or {}))
        except Exception as exc:
            raise ModelLoadError(f"{script}: Model() failed: {_failure(exc)}") from exc

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Call ``predict`` and check it gave every output asked for, as declared.

        Raises:
            InvalidInputError: (or any ``LigeiroError``) as ``predict`` raised it.
            InferenceError: ``predict`` failed, or its answer lacks an output or has the
                wrong dtype or row count.
        """
        feeds = dict(inputs)
        for name in self._bytes_inputs:
            array = feeds.get(name)
            if array is not None:
                feeds[name] = _as_bytes(array, name)
        try:
            answer = self._model.predict(feeds)
        except LigeiroError:
            raise
        except Exception as exc:
            logger.exception("model %r: predict failed", self._name)
            raise InferenceError(f"model {self._name!r}: predict failed: {_failure(exc)}") from exc
        if not isinstance(answer, dict):
            raise InferenceError(
                f"model {self._name!r}: predict returned {type(answer).__name__}, "
                "expected a dict of output name to array"
            )
        rows = next((len(a) for a in inputs.values() if a.ndim), None)
        arrays = []
        for name in outputs:
            if name not in answer:
                raise InferenceError(
                    f"model {self._name!r}: predict returned no output {name!r}; "
                    f"it returned {', '.join(map(str, answer)) or 'nothing'}"
                )
            array = np.asarray(answer[name])
            want = self._dtypes[name]
            if array.dtype != want and not (want.kind == "O" and array.dtype.kind in "OUS"):
                raise InferenceError(
                    f"model {self._name!r}: output {name!r} is {array.dtype.name}, "
                    f"declared {want.name}"
                )
            if rows is not None and (not array.ndim or len(array) != rows):
                raise InferenceError(
                    f"model {self._name!r}: output {name!r} has shape {list(array.shape)}, "
                    f"expected {rows} rows (one per input row)"
                )
            arrays.append(array)
        return arrays

    def close(self) -> None:
        close = getattr(self._model, "close", None)
        if callable(close):
            close()


def _as_bytes(array: np.ndarray, name: str) -> np.ndarray:
    """A BYTES input as an object array of ``bytes``: ``str`` elements UTF-8 encoded."""
    if array.dtype.kind == "O" and not any(type(v) is str for v in array.reshape(-1)):
        return array
    flat = array.reshape(-1)
    out = np.empty(flat.size, dtype=object)
    for i, value in enumerate(flat.tolist()):
        if isinstance(value, str):
            try:
                value = value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800" in JSON)
                raise InvalidInputError(
                    f"input {name!r}: BYTES element {i} is not encodable as UTF-8: {exc.reason}"
                ) from None
        out[i] = value
    return out.reshape(array.shape)
