"""Fuzzing the V2 REST decoder: any body is a request or an InvalidInputError.

``protocol.codec.decode_infer_request`` (JSON, and the binary tensor extension when an
``Inference-Header-Content-Length`` is given) gets generated requests whose every field
may have the wrong type, size or value (shapes huge or negative, data nested, mixed or
out of range, unknown datatypes, binary sizes that do not add up) and mutated bytes.
Nothing else may come out: no numpy or msgspec exception, no crash (each would be a
500 and a traceback), no numpy warning (pytest's filterwarnings = error: 1e39 as FP32
became inf with one, and the model answered NaN). Bounded: a fixed seed
(``make fuzz`` runs it long).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from ligeiro.errors import InvalidInputError
from ligeiro.datatypes import DATATYPES
from ligeiro.protocol.codec import DecodedRequest, RestInferCodec, decode_infer_request
from tests.fuzz import fuzz

_DATATYPES = ["FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16",
              "UINT32", "UINT64", "BOOL", "BYTES", "fp32", "FP99", ""]  # fmt: skip
_INTS = st.integers(-3, 8) | st.integers(-(2**64), 2**64) | st.sampled_from([2**31, 2**62])
_SCALARS = st.one_of(
    _INTS, st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.text(max_size=3),
    st.none(),
)  # fmt: skip
_DATA = st.one_of(  # flat lists of one kind, as clients send them, or anything nested
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=6),
    st.lists(_INTS, max_size=6),
    st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=12),
)


# True about one time in ten (hypothesis leans to the first of a sampled list).
_RARE = st.sampled_from([False] * 9 + [True])


def rarely(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual``, and ``odd`` about one time in ten."""
    return _RARE.flatmap(lambda rare: odd if rare else usual)


_PARAMETERS = st.dictionaries(
    st.sampled_from(["binary_data_size", "binary_data", "content_type", "timeout", "x"]),
    _SCALARS,
    max_size=2,
)


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["x", "y", ""]) | st.text(max_size=3)),
        "shape": draw(rarely(st.lists(_INTS, max_size=3), _SCALARS)),
        "datatype": draw(st.sampled_from(_DATATYPES)),
    }
    tensor["data"] = draw(_DATA)
    if draw(st.booleans()):
        tensor["parameters"] = draw(_PARAMETERS)
    if draw(_RARE):
        del tensor[draw(st.sampled_from(sorted(tensor)))]  # a field missing
    return tensor


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    request: dict[str, Any] = {"inputs": draw(rarely(st.lists(tensors(), max_size=3), _SCALARS))}
    if draw(st.booleans()):
        request["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": st.text(max_size=3)},
                                           optional={"parameters": _PARAMETERS}), max_size=2)
        )  # fmt: skip
    if draw(st.booleans()):
        request["id"] = draw(rarely(st.text(max_size=3), _SCALARS))
    if draw(st.booleans()):
        request["parameters"] = draw(_PARAMETERS)
    body = json.dumps(request).encode()
    header_length = None
    if draw(st.booleans()):  # the binary extension: JSON, then tensors' bytes
        header_length = len(body) + draw(rarely(st.just(0), st.sampled_from([-1, 1])))
        body += draw(st.binary(max_size=24))
    if draw(_RARE):  # a byte changed
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    return body, header_length


@fuzz(600)
@given(bodies())
def test_any_body_is_a_request_or_an_invalid_input_error(body: tuple[bytes, int | None]) -> None:
    data, header_length = body
    try:
        decoded = decode_infer_request(data, header_length)
    except InvalidInputError as exc:
        assert str(exc)
    else:
        assert isinstance(decoded, DecodedRequest)


def _model(**inputs: str) -> Any:
    """What ``RestInferCodec.decode`` reads of a model: its input specs by name, and the
    dtype they share (``ModelVersion.input_dtype``)."""
    specs = {name: SimpleNamespace(name=name, dtype=DATATYPES[datatype], shape=(-1,))
             for name, datatype in inputs.items()}  # fmt: skip
    dtypes = {spec.dtype for spec in specs.values()}
    return SimpleNamespace(inputs=specs, input_dtype=dtypes.pop() if len(dtypes) == 1 else None)


_MODELS = st.sampled_from([
    _model(x="FP32"), _model(x="FP16"), _model(x="FP64"), _model(x="INT64"),
    _model(x="UINT8"), _model(x="INT8"), _model(x="FP32", y="FP32"), _model(x="FP32", y="INT64"),
    _model(x="BYTES"), _model(x="BOOL"),
])  # fmt: skip


def _outcome(decode: Callable[[], DecodedRequest]) -> Any:
    try:
        request = decode()
    except InvalidInputError as exc:
        return str(exc)
    arrays = {name: (a.dtype, a.shape, a.tolist()) for name, a in request.inputs.items()}
    return arrays, request.outputs, request.id, request.binary_outputs, request.timeout_s


# Requests as clients send them to a model of one numeric dtype, give or take a field:
# names x and y, a flat list of numbers (of any kind, in range or not) or of other JSON
# values, shapes with zero or negative dimensions, parameters now and then.
_TYPED_DATA = st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=6) | st.lists(
    _INTS, max_size=6
) | st.lists(_SCALARS, max_size=4) | st.lists(st.lists(st.floats(-9, 9), max_size=3), max_size=2)
_TYPED_TENSORS = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "y"]),
     "shape": st.lists(st.integers(-1, 6), max_size=3),
     "datatype": st.sampled_from(["FP32", "FP32", "FP16", "FP64", "INT64", "UINT8", "BYTES"]),
     "data": _TYPED_DATA},
    optional={"parameters": _PARAMETERS},
).map(  # mostly a shape that holds the data, as a client's does
    lambda t: t if t["shape"] and t["shape"][0] == 6 else {**t, "shape": [1, len(t["data"])]}
)  # fmt: skip
_TYPED_BODIES = st.fixed_dictionaries(
    {"inputs": st.lists(_TYPED_TENSORS, min_size=1, max_size=2)},
    optional={"id": st.text(max_size=3), "parameters": _PARAMETERS,
              "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["y", "z"])}),
                                  max_size=2)},
).map(lambda request: (json.dumps(request).encode(), None))  # fmt: skip


@fuzz(600)
@given(_TYPED_BODIES | bodies(), _MODELS)
@example((b'{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,4]}]}', None),
         _model(x="FP32"))
@example((b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP16","data":[65510]}]}', None),
         _model(x="FP16"))
@example((b'{"inputs":[{"name":"x","shape":[-1,-1],"datatype":"INT64","data":[1]}]}', None),
         _model(x="INT64"))
@example((b'{"inputs":[{"name":"x","shape":[],"datatype":"FP32","data":[1.5]}]}', None),
         _model(x="FP32"))
def test_the_typed_decode_of_a_model_is_the_generic_one(
    body: tuple[bytes, int | None], model: Any
) -> None:
    """For any body and model signature, ``RestInferCodec.decode`` (which tries the typed
    decode of protocol/typed_json.py first) gives what the generic decode gives: the
    same arrays, dtypes, shapes and answer options, or the same error message."""
    data, _ = body
    typed = _outcome(lambda: RestInferCodec().decode(model, (data, None)))
    assert typed == _outcome(lambda: decode_infer_request(data))
