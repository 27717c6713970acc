"""KServe V2 / Open Inference Protocol messages as msgspec structs (JSON on the wire).

Tensor ``data`` stays ``Any`` so msgspec hands over plain nested lists that numpy
turns into an array in one call; ``codec.py`` does that and every check.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ErrorResponse",
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerMetadata",
    "TensorMetadata",
]


class RequestInput(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: Any = None
    parameters: dict[str, Any] | None = None


class RequestOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct):
    inputs: list[RequestInput]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestOutput] | None = None


class ResponseOutput(msgspec.Struct, omit_defaults=True):
    name: str
    datatype: str
    shape: tuple[int, ...]  # numpy's shape as it is: encoded as a JSON array
    # Absent when the tensor travels as binary data after the JSON header; then
    # ``parameters`` says how many bytes it takes (Triton's binary tensor extension).
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(msgspec.Struct, omit_defaults=True):
    model_name: str
    outputs: list[ResponseOutput]
    model_version: str | None = None
    id: str | None = None


class TensorMetadata(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(msgspec.Struct, omit_defaults=True):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    # {"execution_provider": "CUDAExecutionProvider"} for an ONNX model.
    parameters: dict[str, Any] | None = None


class ServerMetadata(msgspec.Struct):
    name: str
    version: str
    extensions: list[str]


class ErrorResponse(msgspec.Struct):
    error: str


class RepositoryModel(msgspec.Struct, omit_defaults=True):
    """An entry of ``POST /v2/repository/index``'s answer."""

    name: str
    version: str
    state: str
    reason: str
    # As in the model's metadata: where a ready ONNX version runs.
    parameters: dict[str, Any] | None = None
