"""The OpenAPI 3.1 document of every route the server answers, built from its models.

Each ready model gets its own paths (``/v2/models/{m}/infer``, ``/v1/models/{m}:predict``,
metadata, readiness, statistics) whose schemas come from its metadata and config:
the tensors' names, datatypes and shapes, named features for tabular models,
``{"inputs": "..."}`` for text models, label names as an enum, and an example made
from the model's warm-up sample. ``GET /openapi.json`` builds it again on every
request (a few milliseconds), so a reload shows at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._openapi_parts import (
    COMPONENTS,
    INFER_ERRORS,
    JSON,
    MODEL_ERRORS,
    NUMBER_OR_NULL,
    PARAMETERS,
    STRING_OR_NULL,
    body,
    embeddings_path,
    errors,
    ok,
    page_paths,
    server_paths,
)
from .codec import PLATFORMS
from .datatypes import datatype_of
from .embeddings import embedding_output

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from .types import ServedModel
    from .types import VersionStateLike
    from ..runtime.base import TensorSpec

__all__ = ["openapi_document", "plain", "predict_example"]


OPENAPI_VERSION = "3.1.0"



def _element(spec: TensorSpec, *, answer: bool) -> dict[str, Any]:
    """One tensor element as JSON; an answer's float may be null (NaN and infinities)."""
    kind = spec.dtype.kind
    if kind == "O":
        return {"type": "string"}
    if kind == "b":
        return {"type": "boolean"}
    if kind in "iu":
        return {"type": "integer"}
    return NUMBER_OR_NULL if answer else {"type": "number"}


def _shape(spec: TensorSpec) -> dict[str, Any]:
    dims = [{"type": "integer", "minimum": 0} if d < 0 else {"const": d} for d in spec.shape]
    return {"type": "array", "prefixItems": dims, "items": False, "minItems": len(dims)}


def _data(spec: TensorSpec, *, answer: bool) -> dict[str, Any]:
    element = _element(spec, answer=answer)
    if answer:
        return {"type": "array", "items": element}
    # A request may send the data flat (row-major), nested like the shape (not text),
    # or as one value alone for a tensor of one element.
    items = element if spec.dtype.kind == "O" else {"anyOf": [element, {"type": "array"}]}
    return {"anyOf": [{"type": "array", "items": items}, element]}


def _tensor(spec: TensorSpec, *, answer: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "name": {"const": spec.name},
        "datatype": {"const": datatype_of(spec.dtype)},
        "shape": _shape(spec) if not answer else {"type": "array", "items": {"type": "integer"}},
        "data": _data(spec, answer=answer),
        "parameters": PARAMETERS,
    }
    return {
        "type": "object",
        "required": ["name", "datatype", "shape", *(() if answer else ("data",))],
        "properties": properties,
    }


def _one_of(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    return schemas[0] if len(schemas) == 1 else {"oneOf": schemas}


def _each_once(names: list[str]) -> dict[str, Any]:
    if len(names) == 1:
        return {}
    once = [
        {"contains": {"properties": {"name": {"const": n}}}, "minContains": 1, "maxContains": 1}
        for n in names
    ]
    return {"allOf": once}


def _infer_request(model: ServedModel) -> dict[str, Any]:
    inputs = [_tensor(s, answer=False) for s in model.inputs.values()]
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": STRING_OR_NULL,
            "parameters": PARAMETERS,
            "inputs": {
                "type": "array",
                "items": _one_of(inputs),
                "minItems": len(inputs),
                "maxItems": len(inputs),
                # Each input once (with as many items as inputs, none is missing).
                **_each_once(list(model.inputs)),
            },
            "outputs": {
                "anyOf": [
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"enum": list(model.outputs)},
                                "parameters": PARAMETERS,
                            },
                        },
                    },
                    {"type": "null"},
                ]
            },
        },
    }


def _infer_response(model: ServedModel) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"const": model.name},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": PARAMETERS,
            "outputs": {
                "type": "array",
                "items": _one_of([_tensor(s, answer=True) for s in model.outputs.values()]),
            },
        },
    }


def plain(array: np.ndarray) -> Any:
    """``array.tolist()``, with float32 values as their shortest form (5.1, not
    5.099999904632568: what a person wrote in the warm-up file)."""
    if array.dtype != np.float32:
        return array.tolist()
    if array.ndim > 1:
        return [plain(part) for part in array]
    return [float(str(value)) for value in array]


def _infer_example(sample: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array.dtype),
                "data": plain(array.ravel()),
            }
            for name, array in sample.items()
        ]
    }


def _is_text(model: ServedModel) -> bool:
    return len(model.inputs) == 1 and next(iter(model.inputs.values())).dtype.kind == "O"


def _predict_request(model: ServedModel, sample: Mapping[str, np.ndarray]) -> tuple[Any, Any]:
    """The :predict body's schema and an example, or (None, None) for a model it cannot take."""
    if len(model.inputs) != 1:
        return None, None
    (spec,) = model.inputs.values()
    (array,) = sample.values()
    if spec.dtype.kind == "O":
        text = {"type": "string"}
        schema = {
            "type": "object",
            "required": ["inputs"],
            "additionalProperties": False,
            "properties": {
                "inputs": {"anyOf": [text, {"type": "array", "items": text, "minItems": 1}]}
            },
        }
        first = array.ravel()[0] if array.size else "text"
        return schema, {"inputs": first.decode() if isinstance(first, bytes) else str(first)}
    number = NUMBER_OR_NULL
    width = spec.shape[-1] if len(spec.shape) == 2 else -1
    row: dict[str, Any] = {"type": "array", "items": NUMBER_OR_NULL}
    if width > 0:
        row |= {"minItems": width, "maxItems": width}
    rows = plain(array.reshape(array.shape[0], -1)) if array.ndim else [[array.item()]]
    features = model.config.features
    if features is None:
        instances = {"type": "array", "items": row, "minItems": 1}
        schema = {
            "type": "object",
            "required": ["instances"],
            "properties": {"instances": instances},
        }
        return schema, {"instances": rows[:1]}
    named = {
        "type": "object",
        "description": "Named features; a missing or null one is NaN (for an imputer).",
        "additionalProperties": False,
        "properties": dict.fromkeys(features, number),
    }
    schema = {
        "anyOf": [
            named,
            {
                "type": "object",
                "required": ["instances"],
                "description": "Rows, each named features or values in order (other keys are "
                "ignored).",
                "properties": {
                    "instances": {
                        "type": "array",
                        "items": {"anyOf": [named, row]},
                        "minItems": 1,
                    }
                },
            },
        ]
    }
    return schema, dict(zip(features, rows[0], strict=False))


def predict_example(model: ServedModel, sample: Mapping[str, np.ndarray]) -> tuple[Any, str]:
    """An example request for ``model`` and the form it takes: ``"features"`` (a
    :predict object of named features), ``"text"`` (:predict ``{"inputs": ...}``),
    ``"rows"`` (:predict ``{"instances": [[...]]}``) or ``"json"`` (a V2 infer request).
    """
    schema, example = _predict_request(model, sample)
    if schema is None:
        return _infer_example(sample), "json"
    if _is_text(model):
        return example, "text"
    return example, "features" if model.config.features is not None else "rows"


def _prediction(model: ServedModel) -> dict[str, Any]:
    """One prediction: a label and probabilities for a classifier, else the outputs."""
    labels = model.config.labels
    properties: dict[str, Any] = {}
    if model.label_output is not None:
        spec = model.outputs[model.label_output]
        properties["label"] = (
            {"enum": labels} if labels is not None else _element(spec, answer=True)
        )
    if model.probability_output is not None:
        names = labels
        probability = NUMBER_OR_NULL
        properties["probabilities"] = (
            {
                "type": "object",
                "properties": dict.fromkeys(names, probability),
                "additionalProperties": False,
            }
            if names is not None
            else {"type": "object", "additionalProperties": probability}
        )
    if properties:
        return {"type": "object", "properties": properties}
    return {}  # the outputs' rows, as they come


def _predict_response(model: ServedModel) -> dict[str, Any]:
    one = _prediction(model)
    many = {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": one}},
    }
    return {"anyOf": [one, many]} if one else {}


def _model_paths(
    model: ServedModel, versions: list[str], sample: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    name = model.name
    tag = [name]
    metadata = {"$ref": "#/components/schemas/ModelMetadata"}
    version_labels = list((model.config.version_labels or {}).keys())
    version_parameter = {
        "name": "model_version",
        "in": "path",
        "required": True,
        "schema": {"enum": versions + version_labels},
    }
    infer_request = _infer_request(model)
    infer_example = _infer_example(sample)
    infer_response = _infer_response(model)

    def infer(operation_id: str, summary: str) -> dict[str, Any]:
        return {
            "post": {
                "tags": tag,
                "operationId": operation_id,
                "summary": summary,
                "requestBody": body(infer_request, infer_example),
                "responses": {
                    "200": {
                        "description": "The outputs (binary tensor data, when asked for, "
                        "follows the JSON header as application/octet-stream).",
                        "content": {
                            JSON: {"schema": infer_response},
                            "application/octet-stream": {},
                        },
                    },
                    **errors(INFER_ERRORS),
                },
            }
        }

    def get(operation_id: str, summary: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "get": {
                "tags": tag,
                "operationId": operation_id,
                "summary": summary,
                "responses": {"200": ok(schema, summary), **errors(MODEL_ERRORS)},
            }
        }

    ready = {"$ref": "#/components/schemas/ModelReady"}
    stats = {"$ref": "#/components/schemas/ModelStats"}
    base = f"/v2/models/{name}"
    versioned = f"{base}/versions/{{model_version}}"
    paths: dict[str, Any] = {
        base: get(f"metadata_{name}", f"Metadata of {name}", metadata),
        f"{base}/ready": get(f"ready_{name}", f"Whether {name} is ready", ready),
        f"{base}/stats": get(f"stats_{name}", f"Statistics of {name}", stats),
        f"{base}/infer": infer(f"infer_{name}", f"Run {name} (V2 inference request)"),
        versioned: get(f"metadata_{name}_version", f"Metadata of a version of {name}", metadata),
        f"{versioned}/infer": infer(f"infer_{name}_version", f"Run a version of {name}"),
    }
    for path in (versioned, f"{versioned}/infer"):
        paths[path]["parameters"] = [version_parameter]
    schema, example = _predict_request(model, sample)
    if schema is not None:
        paths[f"/v1/models/{name}:predict"] = {
            "post": {
                "tags": tag,
                "operationId": f"predict_{name}",
                "summary": f"Predict with {name}: "
                + ("text in" if _is_text(model) else "named features or rows in")
                + ("; a label and its probabilities out" if _prediction(model) else ""),
                "requestBody": body(schema, example),
                "responses": {
                    "200": ok(_predict_response(model), "One prediction, or a list of them"),
                    **errors(INFER_ERRORS),
                },
            }
        }
    return paths



def openapi_document(
    models: Sequence[ServedModel],
    states: Sequence[VersionStateLike],
    sample: Callable[[ServedModel], Mapping[str, np.ndarray]],
    *,
    version: str,
    control: bool,
    pages: bool,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server serving ``models`` (the default version of each).

    Args:
        models: one ready version per model (its default); their paths are documented.
        states: the repository index: the versions each model serves, and those that
            failed (named in the description, with their reason).
        sample: a model's warm-up sample, for the examples.
        version: ligeiro's version.
        control: whether the repository API may load and unload.
        pages: whether the dashboard and ``/docs`` are served.
    """
    versions: dict[str, list[str]] = {}
    failed = []
    for state in states:
        if state.is_ready:
            versions.setdefault(state.name, []).append(state.version)
        else:
            failed.append(f"- `{state.name}` version {state.version or '-'}: {state.reason}")
    paths = server_paths(control)
    tags = [{"name": "server"}, {"name": "repository"}]
    embeddings: dict[str, int] = {}
    for model in sorted(models, key=lambda m: m.name):
        if "{" in model.name or "}" in model.name:
            continue  # not expressible as an OpenAPI path
        paths |= _model_paths(model, versions.get(model.name, [model.version]), sample(model))
        platform = PLATFORMS.get(model.config.platform, model.config.platform)
        tags.append({"name": model.name, "description": f"{platform} model"})
        output = embedding_output(model)
        if output is not None:
            embeddings[model.name] = model.outputs[output].shape[1]
    if embeddings:
        paths |= embeddings_path(embeddings)
        tags.append({"name": "openai"})
    if pages:
        paths |= page_paths()
    description = "KServe V2 (Open Inference Protocol) REST, per-model `:predict`, and more."
    if failed:
        description += "\n\nModels that failed to load:\n\n" + "\n".join(failed)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "ligeiro", "version": version, "description": description},
        "tags": tags,
        "paths": paths,
        "components": COMPONENTS,
        # No token, or an inference token if the server has them (the repository API's
        # operations name the admin token instead).
        "security": [{}, {"inferenceToken": []}],
    }
