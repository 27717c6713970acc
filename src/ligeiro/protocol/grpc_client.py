"""The client's side of V2 gRPC: each call a ``ClientCall`` (method, request, how to
decode the answer) that ``ligeiro.client``'s sync and async gRPC clients both run, so
neither knows a message field."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from ._generated import grpc_service_pb2 as pb
from .codec import array_from_raw, raw_from_array
from .datatypes import datatype_of, dtype_of
from .grpc_codec import array_from_contents

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    import numpy as np
    from google.protobuf.message import Message

__all__ = ["ClientCall", "infer_call", "live_call", "model_metadata_call", "ready_call"]

_R = TypeVar("_R")


class ClientCall(NamedTuple, Generic[_R]):
    """One unary call described, not made: the transport sends it and decodes the answer."""

    method: str
    """The ``inference.GRPCInferenceService`` method, e.g. ``"ModelInfer"``."""
    request: Message
    decode: Callable[[Any], _R]
    """Turns the answer message into what the client returns."""


def live_call() -> ClientCall[bool]:
    """``ServerLive``: whether the server is live."""
    return ClientCall("ServerLive", pb.ServerLiveRequest(), lambda answer: bool(answer.live))


def ready_call() -> ClientCall[bool]:
    """``ServerReady``: whether the server is ready."""
    return ClientCall("ServerReady", pb.ServerReadyRequest(), lambda answer: bool(answer.ready))


def _tensor_dicts(
    tensors: Iterable[pb.ModelMetadataResponse.TensorMetadata],
) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def _metadata_dict(answer: pb.ModelMetadataResponse) -> dict[str, Any]:
    # The shape of REST's ``GET /v2/models/{m}`` body, so both clients return the same.
    found: dict[str, Any] = {
        "name": answer.name,
        "versions": list(answer.versions),
        "platform": answer.platform,
        "inputs": _tensor_dicts(answer.inputs),
        "outputs": _tensor_dicts(answer.outputs),
    }
    if answer.parameters:
        found["parameters"] = {
            key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in answer.parameters.items()
        }
    return found


def model_metadata_call(model: str, version: str | None) -> ClientCall[dict[str, Any]]:
    """``ModelMetadata`` as REST's dict: name, versions, platform, inputs and outputs."""
    request = pb.ModelMetadataRequest(name=model, version=version or "")
    return ClientCall("ModelMetadata", request, _metadata_dict)


def _outputs(answer: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    raw = answer.raw_output_contents
    outputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(answer.outputs):
        where, shape = f"output {tensor.name!r}: ", list(tensor.shape)
        if raw:
            array = array_from_raw(raw[i], tensor.datatype, shape, where, "raw_output_contents")
        else:  # a server that answers in typed contents (KServe's do)
            dtype = dtype_of(tensor.datatype, where)
            array = array_from_contents(tensor.contents, tensor.datatype, dtype, shape, where)
        outputs[tensor.name] = array
    return outputs


def infer_call(
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None,
    version: str | None,
    request_id: str | None,
    timeout_us: int | None = None,
) -> ClientCall[dict[str, np.ndarray]]:
    """``ModelInfer`` with each input's bytes in ``raw_input_contents``; outputs as arrays.

    Decoding raises ``InvalidInputError`` for an answer whose data does not fit its shape.
    """
    request = pb.ModelInferRequest(
        model_name=model, model_version=version or "", id=request_id or ""
    )
    if timeout_us is not None:
        request.parameters["timeout"].int64_param = timeout_us
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        request.raw_input_contents.append(raw_from_array(array))
    for name in outputs or ():
        request.outputs.add(name=name)
    return ClientCall("ModelInfer", request, _outputs)
