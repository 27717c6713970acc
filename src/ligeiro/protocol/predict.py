"""The friendly endpoint, ``POST /v1/models/{m}:predict``: named features in, names out.

Accepts KServe V1 ``{"instances": [...]}``, where an instance is an object of named
features (in any order; the model's ``config.toml`` gives the column order) or a list
of numbers, and the seed's bare object ``{"sepal_length": 5.1, ...}``. A feature that is
missing or ``null`` becomes NaN, for the pipeline's imputer to fill. A model whose one
input is text (BYTES) takes ``{"inputs": "..."}`` or ``{"inputs": ["...", ...]}``.

Answers ``{"predictions": [...]}`` for ``instances`` (or a list of texts) and one
prediction for a bare object (or one text). With a classifier a prediction is
``{"label": ..., "probabilities": {label: p, ...}}``, using ``labels`` from the config
when it names them.
"""

from __future__ import annotations

from itertools import chain
from typing import TYPE_CHECKING, Any, final

import msgspec
import numpy as np

from ..errors import InvalidInputError
from .codec import decode_json
from .datatypes import fits_without_overflow
from .typed_json import decode_typed_features

if TYPE_CHECKING:
    from .types import ServedModel

__all__ = ["PredictCodec", "PredictRequest", "decode_predict", "encode_predict"]

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_NUMBER = (int, float)


def _check_number(value: Any, where: str) -> None:
    # bool is an int subclass, and numpy would turn "1.5" into 1.5: both are refused.
    if value is not None and type(value) not in _NUMBER:
        raise InvalidInputError(
            f"{where}expected a number or null, got {type(value).__name__} {value!r}"
        )


# What a feature's value may be: a number, or null (NaN, for imputers).
_VALUE_TYPES = frozenset((int, float, type(None)))


def _row_from_object(instance: dict[str, Any], features: list[str], where: str) -> list[Any]:
    row = [instance.get(feature) for feature in features]
    if not set(map(type, row)) <= _VALUE_TYPES:  # one C-speed scan for the usual case
        for feature, value in zip(features, row, strict=True):
            _check_number(value, f"{where}feature {feature!r}: ")
    unknown = [key for key in instance if key not in features]
    if unknown:
        raise InvalidInputError(
            f"{where}unknown feature {unknown[0]!r}; expected {', '.join(features)}"
        )
    return row


def _row(instance: Any, features: list[str] | None, width: int, where: str) -> list[Any]:
    if isinstance(instance, dict):
        if features is None:
            raise InvalidInputError(
                f"{where}named features need 'features' in the model's config.toml; "
                f"send a list of {width} numbers instead"
            )
        return _row_from_object(instance, features, where)
    if isinstance(instance, list):
        if width != -1 and len(instance) != width:
            raise InvalidInputError(f"{where}expected {width} values, got {len(instance)}")
        if not set(map(type, instance)) <= _VALUE_TYPES:
            for i, value in enumerate(instance):
                _check_number(value, f"{where}value {i}: ")
        return instance
    raise InvalidInputError(
        f"{where}expected an object of features or a list of numbers, got {type(instance).__name__}"
    )


def _texts(payload: dict[str, Any]) -> tuple[np.ndarray, bool]:
    """``{"inputs": "..."}`` or ``{"inputs": ["...", ...]}`` as an object array of str."""
    if len(payload) != 1:
        unknown = next(key for key in payload if key != "inputs")
        raise InvalidInputError(f"unknown key {unknown!r}; a text request has only 'inputs'")
    texts = payload["inputs"]
    single = isinstance(texts, str)
    if single:
        texts = [texts]
    elif not isinstance(texts, list) or not texts:
        raise InvalidInputError(
            "'inputs' must be a string or a non-empty list of strings, got "
            + ("an empty list" if isinstance(texts, list) else type(texts).__name__)
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(
                f"inputs[{i}]: expected a string, got {type(text).__name__} {text!r}"
            )
    array = np.empty(len(texts), dtype=object)
    array[:] = texts
    return array, single


def decode_predict(body: bytes, model: ServedModel) -> tuple[dict[str, np.ndarray], bool]:
    """Decode a predict body into the model's single input; say whether it was one bare object.

    Raises:
        InvalidInputError: malformed JSON, an unknown feature, a non-numeric value, or a
            model with more than one input.
    """
    if len(model.inputs) != 1:
        decode_json(body, _decoder, "predict request")  # malformed JSON is said first
        raise InvalidInputError(
            f"model {model.name!r} has {len(model.inputs)} inputs; "
            f"use POST /v2/models/{model.name}/infer"
        )
    (spec,) = model.inputs.values()
    features = model.config.features
    if features is not None:
        typed = decode_typed_features(body, features, spec.dtype)  # the common shape
        if typed is not None:
            return {spec.name: typed[0]}, typed[1]
    payload = decode_json(body, _decoder, "predict request")
    width = spec.shape[-1] if len(spec.shape) == 2 else -1
    if spec.dtype.kind == "O" and isinstance(payload, dict) and "inputs" in payload:
        texts, single = _texts(payload)
        return {spec.name: texts}, single
    if isinstance(payload, dict) and "instances" in payload:
        instances = payload["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInputError("'instances' must be a non-empty list")
        single = False
    elif isinstance(payload, dict):
        instances, single = [payload], True
    else:
        raise InvalidInputError(
            'expected a JSON object ({"instances": [...]} or named features), '
            f"got {type(payload).__name__}"
        )
    rows = [
        _row(x, features, width, f"instances[{i}]: " if not single else "")
        for i, x in enumerate(instances)
    ]
    try:
        if fits_without_overflow(list(chain.from_iterable(rows)), spec.dtype):
            array = np.array(rows, dtype=spec.dtype)
        else:
            with np.errstate(over="raise"):  # 1e39 as float32: out of range, not inf
                array = np.array(rows, dtype=spec.dtype)
    except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
        raise InvalidInputError(
            f"instances do not form a {spec.dtype.name} matrix: {exc}"
        ) from None
    return {spec.name: array}, single


def _plain(value: Any) -> Any:
    """A row of an output as JSON-able values: numpy scalars and arrays to lists, bytes to str."""
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    return value.decode() if isinstance(value, bytes) else value


def _prediction(model: ServedModel, outputs: dict[str, np.ndarray], i: int) -> Any:
    labels = model.config.labels
    prediction: dict[str, Any] = {}
    if model.label_output is not None and model.label_output in outputs:
        value = outputs[model.label_output][i]
        # Text classes come back as an object array of str (skl2onnx's STRING label).
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, bytes):
            value = value.decode()
        if labels is not None and isinstance(value, int) and 0 <= value < len(labels):
            value = labels[value]
        prediction["label"] = value
    if model.probability_output is not None and model.probability_output in outputs:
        row = outputs[model.probability_output][i].tolist()
        names = labels if labels is not None else [str(j) for j in range(len(row))]
        prediction["probabilities"] = dict(zip(names, row, strict=False))
    return prediction if prediction else _plain_prediction(outputs, i)


def _plain_prediction(outputs: dict[str, np.ndarray], i: int) -> Any:
    """Row ``i`` of a model with no label or probability output: its one output's value,
    or every output's by name.

    Apart from ``_prediction``: this comprehension reads ``i``, which would make it a
    closure cell created on every call of the function it sits in.
    """
    values = {name: _plain(array[i]) for name, array in outputs.items()}
    return next(iter(values.values())) if len(values) == 1 else values


def encode_predict(model: ServedModel, outputs: dict[str, np.ndarray], single: bool) -> bytes:
    """Encode the answer: one prediction for a bare object, else ``{"predictions": [...]}``."""
    if single:
        return _encoder.encode(_prediction(model, outputs, 0))
    rows = len(next(iter(outputs.values())))
    # A loop: a comprehension here reads model and outputs, which would make them closure
    # cells, created on every call (with the comprehension's own call).
    predictions = []
    for i in range(rows):
        predictions.append(_prediction(model, outputs, i))
    return _encoder.encode({"predictions": predictions})


@final
class PredictRequest:
    """A decoded predict request: the model's one input, and whether it was one object."""

    __slots__ = ("inputs", "single")
    outputs = None  # every output
    id = None  # predict requests carry no id
    timeout_s = None  # nor a queue timeout

    def __init__(self, inputs: dict[str, np.ndarray], single: bool) -> None:
        self.inputs = inputs
        self.single = single


@final
class PredictCodec:
    """``POST /v1/models/{m}:predict`` as ``DataPlane.infer`` decodes and encodes it.

    The payload is the body and the raw ``Inference-Header-Content-Length`` (refused:
    binary tensors are V2's); the answer is the JSON body.
    """

    __slots__ = ()

    def decode(self, model: ServedModel, payload: tuple[bytes, bytes | None]) -> PredictRequest:
        body, header_length = payload
        if header_length is not None:
            raise InvalidInputError(
                "binary tensor data is for POST /v2/models/{model}/infer, not :predict"
            )
        inputs, single = decode_predict(body, model)
        return PredictRequest(inputs, single)

    def encode(
        self, model: ServedModel, request: PredictRequest, outputs: dict[str, np.ndarray]
    ) -> bytes:
        return encode_predict(model, outputs, request.single)
