"""One model folder, loaded in this process: ``ligeiro.load(path).predict(X)``.

The same runtime, config checks and warm-up as the server (``repository.registry``'s
``load_version``), and the same input check as the engine (``repository.checks``), with
none of the server: no event loop, no sockets, no batcher. Importing this module and
loading iris costs about what ONNX Runtime and numpy cost to import (see
docs/benchmarks.md, "Cold start").
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import numpy as np

from ._features import tensor_from_features
from .errors import InvalidInputError, ModelLoadError, ModelNotFoundError
from .protocol.datatypes import datatype_of
from .repository.checks import check_inputs, decode_text
from .repository.config import load_config
from .repository.layout import locate
from .repository.registry import load_version
from .warmup import warm_up

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    from .repository.layout import ModelFolder
    from .repository.registry import ModelVersion

__all__ = ["Model", "load"]

logger = logging.getLogger(__name__)


def _flat(values: np.ndarray) -> np.ndarray:
    """``[N, 1]`` as ``[N]``: one value per row, as scikit-learn's ``predict`` returns."""
    return values.reshape(len(values)) if values.ndim == 2 and values.shape[1] == 1 else values


@final
class Model:
    """A loaded model version: ``predict``, ``predict_proba``, ``infer`` and ``metadata``.

    Made by ``ligeiro.load``; safe to call from several threads (ONNX Runtime's
    sessions are). ``close()`` (or ``with``) frees the session.
    """

    def __init__(self, model: ModelVersion, folder: ModelFolder) -> None:
        self._model = model
        self._folder = folder.path
        # The folder holding the version's model.onnx (the folder itself when flat).
        self.directory = folder.version_path(int(model.version))
        self.name = model.name
        self.version = model.version
        self.features: list[str] | None = model.config.features
        self.labels: list[str] | None = model.config.labels

    def __repr__(self) -> str:
        return f"<ligeiro.Model {self.name!r} version {self.version} from {self._folder}>"

    def infer(
        self, inputs: Mapping[str, Any], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model on raw tensors: ``{input name: array}`` → ``{output name: array}``.

        Raises:
            InvalidInputError: an input is unknown, missing, or of the wrong dtype or
                shape; an output name is unknown.
            InferenceError: the runtime failed.
        """
        model = self._model
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        check_inputs(model, arrays)
        if model.runtime.text_inputs:
            arrays = dict(decode_text(model, arrays))
        names = model.output_names if outputs is None else tuple(outputs)
        for name in names:
            if name not in model.outputs:
                raise InvalidInputError(
                    f"model {model.name!r}: unknown output {name!r}; "
                    f"it gives {', '.join(model.outputs)}"
                )
        return dict(zip(names, model.runtime.run(arrays, names), strict=True))

    def _run(self, x: Any, output: str) -> np.ndarray:
        model = self._model
        if len(model.inputs) != 1:
            raise InvalidInputError(
                f"model {model.name!r} has {len(model.inputs)} inputs "
                f"({', '.join(model.inputs)}); use infer({{name: array}})"
            )
        (spec,) = model.inputs.values()
        try:
            tensor = tensor_from_features(x, spec, self.features)
        except InvalidInputError as exc:
            raise InvalidInputError(f"model {model.name!r}: {exc}") from None
        return self.infer({spec.name: tensor}, [output])[output]

    def predict(self, x: Any) -> np.ndarray:
        """The model's answer per row: class labels for a classifier, values otherwise.

        ``x`` is a pandas DataFrame, a dict of columns, a list of dicts of named
        features, one dict (one row) or a 2-D array or list, columns in the model's
        order; for a text model a string or a list of strings. A classifier's labels
        are the names ``labels`` in its config.toml gives, when it gives them.

        Raises:
            InvalidInputError: a missing or unknown column, a value that is not a
                number (naming its column and row), rows of the wrong width.

        Example:
            >>> ligeiro.load("examples/models/iris").predict(
            ...     [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
            ...       "petal_width": 0.2}])
            array(['iris-setosa'], dtype=object)
        """
        model = self._model
        output = model.label_output or model.output_names[0]
        values = _flat(self._run(x, output))
        if model.label_output is None:
            return values
        if values.dtype.kind == "O":  # text classes: skl2onnx's STRING labels
            return np.array([v.decode() if isinstance(v, bytes) else v for v in values], object)
        if self.labels is None:
            return values
        names = np.array(self.labels, dtype=object)
        outside = (values < 0) | (values >= len(names))
        if outside.any():
            return np.array(
                [names[v] if 0 <= v < len(names) else v for v in values.tolist()], object
            )
        labelled: np.ndarray = names[values]
        return labelled

    def predict_proba(self, x: Any) -> np.ndarray:
        """Each row's class probabilities, ``[rows, classes]`` (classes in ``labels`` order).

        Raises:
            InvalidInputError: as ``predict``, or the model gives no probabilities.
        """
        output = self._model.probability_output
        if output is None:
            raise InvalidInputError(
                f"model {self.name!r} gives no probabilities (no 'output_probability' "
                "output, and config.toml names no probability_output)"
            )
        return self._run(x, output)

    def predict_json(self, body: bytes) -> bytes:
        """The answer ``POST /v1/models/{name}:predict`` gives to the JSON ``body``.

        Raises:
            InvalidInputError: as the endpoint's 400: malformed JSON, an unknown
                feature, a value that is not a number.
        """
        from .protocol.predict import decode_predict, encode_predict  # the wire format

        inputs, single = decode_predict(body, self._model)
        return encode_predict(self._model, self.infer(inputs), single)

    @property
    def metadata(self) -> dict[str, Any]:
        """Name, version, inputs and outputs (V2 datatypes), features, labels, and which
        outputs hold the label and the probabilities (``None`` when none does)."""
        model = self._model

        def tensors(specs: Mapping[str, Any]) -> list[dict[str, Any]]:
            return [
                {"name": s.name, "datatype": datatype_of(s.dtype), "shape": list(s.shape)}
                for s in specs.values()
            ]

        return {
            "name": model.name,
            "version": model.version,
            "platform": model.config.platform,
            "inputs": tensors(model.inputs),
            "outputs": tensors(model.outputs),
            "features": self.features,
            "labels": self.labels,
            "label_output": model.label_output,
            "probability_output": model.probability_output,
        }

    @property
    def sha256(self) -> str:
        """The SHA-256 of the version's ``model.onnx`` (hex), or of ``model.py``."""
        directory = self.directory
        for name in ("model.onnx", "model.py"):
            if (directory / name).is_file():
                return hashlib.sha256((directory / name).read_bytes()).hexdigest()
        raise ModelLoadError(f"{directory}: no model.onnx or model.py to hash")

    def close(self) -> None:
        """Free the model's session."""
        self._model.runtime.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def load(path: str | Path, version: int | str | None = None, *, threads: int = 1) -> Model:
    """Load one model folder (REPO/NAME), version folder (REPO/NAME/VERSION), or flat
    model folder (``model.onnx`` and ``config.toml`` side by side: version 1).

    Without ``version``, the highest version on disk that the folder's
    ``version_policy`` selects; a version that fails to load is an error (never a
    silent fall-back to an older one). The version runs once on its warm-up sample, as
    on the server, so the first ``predict`` is as fast as the rest.

    Args:
        path: the model folder, or one of its version folders.
        version: the version number, when ``path`` is a model folder.
        threads: ONNX Runtime intra-op threads.

    Raises:
        ModelNotFoundError: ``path`` is not a model folder, or has no such version.
        ModelLoadError: the config or the model file is invalid (the message names the
            file and why: not ONNX, a pickle, a config key).

    Example:
        >>> model = ligeiro.load("examples/models/iris")
        >>> model.predict([[5.1, 3.5, 1.4, 0.2]])
        array(['iris-setosa'], dtype=object)
    """
    folder, named = locate(Path(path))
    if version is not None and named is not None and str(version) != str(named):
        raise ModelNotFoundError(
            f"{path}: is version {named}'s folder, but version {version} was asked for"
        )
    config = load_config(folder.path)
    if config.platform == "pipeline":
        raise ModelLoadError(
            f"{folder.path}: a pipeline runs other models of its repository; "
            f"load it with ligeiro.Engine.from_repository({str(folder.path.parent)!r})"
        )
    wanted = named if version is None else int(version) if str(version).isdigit() else None
    if wanted is None:
        if version is not None:
            raise ModelNotFoundError(f"{folder.path}: version {version!r} is not a number")
        policy = config.version_policy
        selected = policy.select(folder.versions) if policy is not None else folder.versions
        if not selected:
            raise ModelNotFoundError(
                f"{folder.path}: no version to load (versions on disk: "
                f"{', '.join(map(str, folder.versions)) or 'none'})"
            )
        wanted = selected[-1]
    elif wanted not in folder.versions:
        raise ModelNotFoundError(
            f"{folder.path}: no version {wanted}; versions: "
            f"{', '.join(map(str, folder.versions)) or 'none'}"
        )
    loaded = load_version(folder, wanted, config, threads=threads)
    try:
        warm_up(loaded, folder.path)
    except BaseException:
        loaded.runtime.close()
        raise
    logger.debug("loaded model %r version %d from %s", folder.name, wanted, folder.path)
    return Model(loaded, folder)
