"""Fuzzing ``POST /v1/models/{m}:predict``'s codec: any body is a request or an InvalidInputError.

``PredictCodec.decode`` gets generated bodies for four kinds of model (iris-like FP32 with
named features, the same without, an INT64 one, a text one, one of two inputs): KServe
V1 ``instances`` of objects or lists, bare objects and text ``inputs``, every value maybe
of the wrong type, out of range or nested, missing or unknown features, and bytes
changed. Nothing but an InvalidInputError may come out (anything else would be a 500 and
a traceback), nor a numpy warning (pytest's filterwarnings = error). What it decodes has
the model's dtype and one row per instance, and encodes back with made-up outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from unittest.mock import patch

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from ligeiro.errors import InvalidInputError
from ligeiro.protocol.predict import PredictCodec, decode_predict
from tests.fuzz import fuzz


@dataclass
class Spec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass
class Config:
    features: list[str] | None = None
    labels: list[str] | None = None
    platform: str = "onnxruntime_onnx"
    version_labels: dict[str, int] | None = None


@dataclass
class Model:
    name: str
    inputs: dict[str, Spec]
    config: Config = field(default_factory=Config)
    version: str = "1"
    outputs: dict[str, Spec] = field(default_factory=dict)
    label_output: str | None = "label"
    probability_output: str | None = "probabilities"


FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
MODELS = {
    "named": Model("iris", {"x": Spec("x", np.dtype("float32"), (-1, 4))},
                   Config(features=FEATURES, labels=["setosa", "versicolor"])),
    "plain": Model("plain", {"x": Spec("x", np.dtype("float32"), (-1, 4))}),
    "int64": Model("counts", {"x": Spec("x", np.dtype("int64"), (-1, 2))}),
    "text": Model("sentiment", {"text": Spec("text", np.dtype(object), (-1,))}),
    "two inputs": Model("two", {"a": Spec("a", np.dtype("float32"), (-1, 1)),
                                "b": Spec("b", np.dtype("float32"), (-1, 1))}),
}  # fmt: skip
_NUMBERS = st.one_of(
    st.floats(-10, 10), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70), st.sampled_from([1e39, -1e39, 2**63, 2**64, 1e300]),
)  # fmt: skip
_VALUES = _NUMBERS | st.none() | st.booleans() | st.text(max_size=3) | st.lists(_NUMBERS, max_size=2)
_KEYS = st.sampled_from([*FEATURES, "x", ""]) | st.text(max_size=4)
_INSTANCES = st.one_of(
    st.lists(_VALUES, max_size=5),
    st.dictionaries(_KEYS, _VALUES, max_size=5),
    st.fixed_dictionaries({name: _NUMBERS for name in FEATURES}),
    _VALUES,
)
_BODIES = st.one_of(
    st.fixed_dictionaries({"instances": st.lists(_INSTANCES, max_size=4)}),
    st.fixed_dictionaries({"instances": _VALUES}),
    st.dictionaries(_KEYS, _VALUES, max_size=5),  # a bare object of features
    st.fixed_dictionaries({"inputs": st.text() | st.lists(st.text() | _VALUES, max_size=3)},
                          optional={"x": _VALUES}),
    st.recursive(_VALUES, lambda inner: st.lists(inner, max_size=3), max_leaves=8),
)  # fmt: skip


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    body = json.dumps(draw(_BODIES)).encode()
    if draw(st.booleans()) and draw(st.booleans()):  # a byte changed or cut
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + draw(st.binary(max_size=2)) + body[at + 1 :]
    header_length = draw(st.sampled_from([None] * 9 + [b"10"]))
    return body, header_length


@fuzz(600)
@given(st.sampled_from(sorted(MODELS)), bodies())
@example("int64", (b'{"instances": [[1e300, 1]]}', None))  # no int64 holds it
@example("named", (b'{"instances": [{"sepal_length": "\xff"}]}', None))  # not UTF-8
def test_any_predict_body_is_a_request_or_an_invalid_input_error(
    kind: str, payload: tuple[bytes, bytes | None]
) -> None:
    model = MODELS[kind]
    codec = PredictCodec()
    try:
        request = codec.decode(model, payload)  # type: ignore[arg-type]
    except InvalidInputError as exc:
        assert str(exc)
        return
    [(name, array)] = request.inputs.items()
    spec = model.inputs[name]
    assert array.dtype == spec.dtype
    rows = len(array)
    assert rows >= 1
    if spec.dtype != object:
        assert array.ndim == 2 and array.shape[1] == spec.shape[1]
    outputs = {"label": np.zeros(rows, np.int64),
               "probabilities": np.full((rows, 2), 0.5, np.float32)}  # fmt: skip
    answer = json.loads(codec.encode(model, request, outputs))  # type: ignore[arg-type]
    assert len(answer["predictions"]) == rows if not request.single else "label" in answer


NAMED = {
    "FP32": MODELS["named"],
    "FP16": Model("half", {"x": Spec("x", np.dtype("float16"), (-1, 4))}, Config(FEATURES)),
    "INT64": Model("ints", {"x": Spec("x", np.dtype("int64"), (-1, 4))}, Config(FEATURES)),
    "text": Model("named-text", {"x": Spec("x", np.dtype(object), (-1, 4))}, Config(FEATURES)),
}


def _outcome(model: Model, body: bytes) -> object:
    try:
        inputs, single = decode_predict(body, model)  # type: ignore[arg-type]
    except InvalidInputError as exc:
        return str(exc)
    # Bytes compare NaN with NaN; an object array's bytes are pointers: its values then.
    return {n: (a.dtype, a.shape, a.tolist() if a.dtype == object else a.tobytes())
            for n, a in inputs.items()}, single  # fmt: skip


# Objects of the model's features (some missing or null), as clients send them.
_ROWS = st.dictionaries(st.sampled_from(FEATURES), _NUMBERS | st.none(), max_size=4)
_FEATURE_BODIES = (_ROWS | st.fixed_dictionaries({"instances": st.lists(_ROWS, max_size=3)})).map(
    lambda value: (json.dumps(value).encode(), None)
)


@fuzz(600)
@given(st.sampled_from(sorted(NAMED)), bodies() | _FEATURE_BODIES)
@example("FP32", (b'{"sepal_length": 1, "sepal_length": 2.5}', None))  # a repeated key
@example("FP16", (b'{"sepal_length": 65510}', None))  # past FP16's largest, rounds to it
@example("FP32", (b'{"instances": []}', None))
@example("FP32", (b'{"instances": [{"petal_width": null}, {}]}', None))
def test_the_typed_decode_of_named_features_is_the_generic_one(
    kind: str, payload: tuple[bytes, bytes | None]
) -> None:
    """For any body, ``decode_predict`` (which tries protocol/typed_json.py's typed decode
    of named features first) gives what its generic decode gives: the same matrix, to
    the byte (NaN for a missing feature), or the same error message."""
    model, body = NAMED[kind], payload[0]
    with patch("ligeiro.protocol.predict.decode_typed_features", return_value=None):
        generic = _outcome(model, body)
    assert _outcome(model, body) == generic
