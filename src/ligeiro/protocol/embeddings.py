"""OpenAI's embeddings API, ``POST /v1/embeddings``, for models that embed text.

A model qualifies when its one input is text (BYTES) and it gives a float output of
shape ``[-1, D]`` and is not a classifier (no probability output): ``minilm`` does.
The request is ``{"model": "minilm", "input": "text" | ["a", "b"]}`` (``encoding_format``
``"float"`` or ``"base64"``, as the ``openai`` client asks by default; ``dimensions``
only as the model's own D; ``user`` is accepted and ignored). The answer is
``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}],
"model": ..., "usage": {"prompt_tokens": n, "total_tokens": n}}``.

``usage`` counts whitespace-separated words: the tokenizer runs inside the model (a
pipeline's first step), so the server does not see its token count.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from ..errors import InvalidInputError
from .codec import decode_json

if TYPE_CHECKING:
    from .types import ServedModel

__all__ = [
    "EmbeddingsCodec",
    "EmbeddingsDecoded",
    "EmbeddingsRequest",
    "check_dimensions",
    "decode_embeddings",
    "embedding_output",
    "encode_embeddings",
]

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_KEYS = ("model", "input", "encoding_format", "dimensions", "user")


def embedding_output(model: ServedModel) -> str | None:
    """The output holding ``model``'s embeddings, or None if it is not a text embedder."""
    if len(model.inputs) != 1 or next(iter(model.inputs.values())).dtype.kind != "O":
        return None
    if model.probability_output is not None or model.label_output is not None:
        return None
    for spec in model.outputs.values():
        if len(spec.shape) == 2 and spec.shape[1] > 0 and spec.dtype.kind == "f":
            return spec.name
    return None


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """A decoded embeddings request: the model, its texts and how to encode the answer."""

    model: str
    texts: np.ndarray
    as_base64: bool
    dimensions: int | None


def decode_embeddings(body: bytes) -> EmbeddingsRequest:
    """Decode an OpenAI embeddings request.

    Raises:
        InvalidInputError: malformed JSON, a missing or mistyped field, or an unknown key.
    """
    payload = decode_json(body, _decoder, "embeddings request")
    if not isinstance(payload, dict):
        raise InvalidInputError(
            f'expected a JSON object {{"model": ..., "input": ...}}, got {type(payload).__name__}'
        )
    unknown = [key for key in payload if key not in _KEYS]
    if unknown:
        raise InvalidInputError(f"unknown key {unknown[0]!r}; expected {', '.join(_KEYS)}")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInputError(f"'model' must be a model name, got {model!r}")
    texts = payload.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise InvalidInputError(
            "'input' must be a string or a non-empty list of strings, got "
            + ("an empty list" if isinstance(texts, list) else type(texts).__name__)
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(
                f"input[{i}]: expected a string, got {type(text).__name__} "
                "(token arrays are not supported: send text)"
            )
    encoding = payload.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidInputError(f"'encoding_format' must be 'float' or 'base64', got {encoding!r}")
    dimensions = payload.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions <= 0):
        raise InvalidInputError(f"'dimensions' must be a positive integer, got {dimensions!r}")
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidInputError(f"'user' must be a string, got {type(user).__name__}")
    array = np.empty(len(texts), dtype=object)
    array[:] = texts
    return EmbeddingsRequest(model, array, encoding == "base64", dimensions)


def check_dimensions(request: EmbeddingsRequest, model: ServedModel, output: str) -> None:
    """Refuse a ``dimensions`` other than the model's own.

    Raises:
        InvalidInputError: ``dimensions`` differs from the model's D.
    """
    width = model.outputs[output].shape[1]
    if request.dimensions is not None and request.dimensions != width:
        raise InvalidInputError(
            f"model {model.name!r} gives {width} dimensions, got dimensions={request.dimensions} "
            "(it cannot shorten its embeddings)"
        )


def encode_embeddings(request: EmbeddingsRequest, name: str, embeddings: np.ndarray) -> bytes:
    """The OpenAI answer for ``request``: one embedding per text, in order."""
    data: list[dict[str, Any]] = []
    for i, row in enumerate(embeddings):
        vector: Any
        if request.as_base64:  # little-endian float32, as OpenAI sends it
            vector = base64.b64encode(row.astype("<f4").tobytes()).decode()
        else:
            vector = row.tolist()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    words = sum(len(str(text).split()) for text in request.texts)
    return _encoder.encode(
        {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": words, "total_tokens": words},
        }
    )


class EmbeddingsDecoded:
    """A decoded embeddings request as ``DataPlane.infer`` submits it: the texts as the
    model's one BYTES input, and the one embedding output asked for."""

    __slots__ = ("inputs", "output", "outputs", "request")
    id = None  # OpenAI's requests carry no id
    timeout_s = None  # nor a queue timeout

    def __init__(self, request: EmbeddingsRequest, model: ServedModel, output: str) -> None:
        self.request = request
        self.output = output
        self.outputs = (output,)
        self.inputs = {next(iter(model.inputs)): request.texts}


class EmbeddingsCodec:
    """``POST /v1/embeddings`` as ``DataPlane.infer`` decodes and encodes it.

    The payload is the decoded request (its ``model`` names what to resolve) and the raw
    ``Inference-Header-Content-Length`` (refused: binary tensors are V2's).
    """

    __slots__ = ()

    def decode(
        self, model: ServedModel, payload: tuple[EmbeddingsRequest, bytes | None]
    ) -> EmbeddingsDecoded:
        request, header_length = payload
        output = embedding_output(model)
        if output is None:
            raise InvalidInputError(
                f"model {model.name!r} does not embed text: /v1/embeddings needs one BYTES "
                f"input and a [-1, D] float output; use POST /v2/models/{model.name}/infer"
            )
        if header_length is not None:
            raise InvalidInputError(
                "binary tensor data is for POST /v2/models/{model}/infer, not /v1/embeddings"
            )
        check_dimensions(request, model, output)
        return EmbeddingsDecoded(request, model, output)

    def encode(
        self, model: ServedModel, decoded: EmbeddingsDecoded, outputs: dict[str, np.ndarray]
    ) -> bytes:
        return encode_embeddings(decoded.request, model.name, outputs[decoded.output])
