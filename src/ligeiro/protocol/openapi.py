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

from .codec import PLATFORMS
from .datatypes import datatype_of
from .embeddings import embedding_output

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from ..repository.registry import ModelState, ModelVersion
    from ..runtime.base import TensorSpec

__all__ = ["openapi_document", "plain", "predict_example"]

OPENAPI_VERSION = "3.1.0"
_JSON = "application/json"
_ERROR = {"$ref": "#/components/schemas/Error"}
# What each error status means on the routes that may answer it.
_ERRORS = {
    "400": "The request is malformed or does not fit the model (the message says where).",
    "401": "The bearer token is missing or wrong.",
    "403": "Model control is not explicit.",
    "404": "No such model or version.",
    "413": "The body is over the server's size limit.",
    "415": "The body's Content-Encoding is not gzip, deflate or identity.",
    "429": "The model's queue is full; retry after the Retry-After seconds.",
    "503": "The model failed to load (the message says why).",
    "504": "The request's timeout passed while it was queued.",
}
# A float that JSON may carry as null (NaN, infinities; a missing feature). Spelt as
# anyOf rather than a type list: schemathesis 4.32 fails on type lists inside anyOf.
_NUMBER_OR_NULL: dict[str, Any] = {"anyOf": [{"type": "number"}, {"type": "null"}]}
# V2 parameters: an object, or null (as absent).
_PARAMETERS: dict[str, Any] = {"anyOf": [{"type": "object"}, {"type": "null"}]}
_STRING_OR_NULL: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_INFER_ERRORS = ("400", "404", "413", "415", "429", "503", "504")
_MODEL_ERRORS = ("404", "503")


def _errors(statuses: Iterable[str]) -> dict[str, Any]:
    return {
        s: {"description": _ERRORS[s], "content": {_JSON: {"schema": _ERROR}}} for s in statuses
    }


def _ok(schema: dict[str, Any], description: str, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {_JSON: media}}


def _body(schema: dict[str, Any], example: Any = None, required: bool = True) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": required, "content": {_JSON: media}}


def _element(spec: TensorSpec, *, answer: bool) -> dict[str, Any]:
    """One tensor element as JSON; an answer's float may be null (NaN and infinities)."""
    kind = spec.dtype.kind
    if kind == "O":
        return {"type": "string"}
    if kind == "b":
        return {"type": "boolean"}
    if kind in "iu":
        return {"type": "integer"}
    return _NUMBER_OR_NULL if answer else {"type": "number"}


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
        "parameters": _PARAMETERS,
    }
    return {
        "type": "object",
        "required": ["name", "datatype", "shape"] if answer else ["name", "datatype", "shape", "data"],
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


def _infer_request(model: ModelVersion) -> dict[str, Any]:
    inputs = [_tensor(s, answer=False) for s in model.inputs.values()]
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": _STRING_OR_NULL,
            "parameters": _PARAMETERS,
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
                                "parameters": _PARAMETERS,
                            },
                        },
                    },
                    {"type": "null"},
                ]
            },
        },
    }


def _infer_response(model: ModelVersion) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"const": model.name},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": _PARAMETERS,
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


def _is_text(model: ModelVersion) -> bool:
    return len(model.inputs) == 1 and next(iter(model.inputs.values())).dtype.kind == "O"


def _predict_request(model: ModelVersion, sample: Mapping[str, np.ndarray]) -> tuple[Any, Any]:
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
    number = _NUMBER_OR_NULL
    width = spec.shape[-1] if len(spec.shape) == 2 else -1
    row: dict[str, Any] = {"type": "array", "items": _NUMBER_OR_NULL}
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


def predict_example(model: ModelVersion, sample: Mapping[str, np.ndarray]) -> tuple[Any, str]:
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


def _prediction(model: ModelVersion) -> dict[str, Any]:
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
        probability = _NUMBER_OR_NULL
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


def _predict_response(model: ModelVersion) -> dict[str, Any]:
    one = _prediction(model)
    many = {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": one}},
    }
    return {"anyOf": [one, many]} if one else {}


def _model_paths(
    model: ModelVersion, versions: list[str], sample: Mapping[str, np.ndarray]
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
                "requestBody": _body(infer_request, infer_example),
                "responses": {
                    "200": {
                        "description": "The outputs (binary tensor data, when asked for, "
                        "follows the JSON header as application/octet-stream).",
                        "content": {
                            _JSON: {"schema": infer_response},
                            "application/octet-stream": {},
                        },
                    },
                    **_errors(_INFER_ERRORS),
                },
            }
        }

    def get(operation_id: str, summary: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "get": {
                "tags": tag,
                "operationId": operation_id,
                "summary": summary,
                "responses": {"200": _ok(schema, summary), **_errors(_MODEL_ERRORS)},
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
                "requestBody": _body(schema, example),
                "responses": {
                    "200": _ok(_predict_response(model), "One prediction, or a list of them"),
                    **_errors(_INFER_ERRORS),
                },
            }
        }
    return paths


def _server_paths(control: bool) -> dict[str, Any]:
    def get(path: str, operation_id: str, summary: str, schema: dict[str, Any]) -> Any:
        operation: dict[str, Any] = {
            "tags": ["server"],
            "operationId": operation_id,
            "summary": summary,
            "responses": {"200": _ok(schema, summary)},
        }
        if path.startswith("/v2/health/"):  # probes never carry a token
            operation["security"] = []
        return path, {"get": operation}

    health = {"type": "object", "properties": {"live": {"type": "boolean"}}}
    readiness = {"type": "object", "properties": {"ready": {"type": "boolean"}}}
    index = {"type": "array", "items": {"$ref": "#/components/schemas/RepositoryModel"}}
    admin = [{"adminToken": []}]
    # Without explicit control a change answers 403 before anything else.
    change_errors = ("400", "401", "403", "404") if control else ("403",)

    def change(verb: str) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "tags": ["repository"],
            "operationId": f"repository_{verb}",
            "summary": f"{verb.capitalize()} a model (explicit model control; admin token)",
            "parameters": [
                {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"200": _ok(index, "The model's versions now"), **_errors(change_errors)},
        }
        if control:  # else it answers 403 whatever the token
            operation["security"] = admin
        if verb == "load":
            operation["requestBody"] = _body(
                {
                    "type": "object",
                    "properties": {
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "config": {
                                    "type": "string",
                                    "description": "The model's config as a JSON object",
                                }
                            },
                        }
                    },
                },
                required=False,
            )
        return {"post": operation}

    paths = dict(
        (
            get("/v2/health/live", "live", "Whether the server is live", health),
            get("/v2/health/ready", "ready", "Whether the server is ready", readiness),
            get("/v2", "server_metadata", "Server name, version and extensions",
                {"$ref": "#/components/schemas/ServerMetadata"}),
            get("/v2/models/stats", "stats", "Statistics of every ready model version",
                {"$ref": "#/components/schemas/ModelStats"}),
        )
    )  # fmt: skip
    paths["/metrics"] = {
        "get": {
            "tags": ["server"],
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "The Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    paths["/v2/repository/index"] = {
        "post": {
            "tags": ["repository"],
            "operationId": "repository_index",
            "summary": "Every model version, its state and the reason a load failed",
            "security": [{}, *admin],
            "requestBody": _body(
                {
                    "type": "object",
                    "properties": {
                        "ready": {
                            "description": "Only the ready versions when true (any JSON value "
                            "is read by its truth: {} and 0 as false)"
                        }
                    },
                },
                required=False,
            ),
            "responses": {"200": _ok(index, "The index"), **_errors(("400", "401"))},
        }
    }
    paths["/v2/repository/models/{model_name}/load"] = change("load")
    paths["/v2/repository/models/{model_name}/unload"] = change("unload")
    return paths


def _embeddings_path(models: dict[str, int]) -> dict[str, Any]:
    """``/v1/embeddings`` for ``models`` (name -> the embedding's size D)."""
    text = {"type": "string"}
    request = {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"enum": list(models)},
            "input": {"anyOf": [text, {"type": "array", "items": text, "minItems": 1}]},
            "encoding_format": {"enum": ["float", "base64"]},
            "dimensions": {
                "enum": [*sorted(set(models.values())), None],
                "description": "The model's own size only (it cannot shorten its embeddings)",
            },
            "user": _STRING_OR_NULL,
        },
    }
    embedding = {
        "type": "object",
        "required": ["object", "index", "embedding"],
        "properties": {
            "object": {"const": "embedding"},
            "index": {"type": "integer"},
            "embedding": {
                "anyOf": [{"type": "array", "items": _NUMBER_OR_NULL}, text]
            },
        },
    }
    response = {
        "type": "object",
        "required": ["object", "data", "model", "usage"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": embedding},
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "properties": {
                    "prompt_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                },
            },
        },
    }
    return {
        "/v1/embeddings": {
            "post": {
                "tags": ["openai"],
                "operationId": "embeddings",
                "summary": "OpenAI-compatible embeddings of text",
                "requestBody": _body(
                    request, {"model": next(iter(models)), "input": "The food was delicious."}
                ),
                "responses": {
                    "200": _ok(response, "One embedding per input"),
                    **_errors(_INFER_ERRORS),
                },
            }
        }
    }


def _page_paths() -> dict[str, Any]:
    def page(operation_id: str, summary: str, media: str) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "tags": ["pages"],
            "operationId": operation_id,
            "summary": summary,
            "responses": {"200": {"description": summary, "content": {media: {}}}},
        }
        if media == "text/html":  # a page holds no data: it loads without a token
            operation["security"] = []
        return {"get": operation}

    return {
        "/": page("dashboard", "The dashboard: models, their state and latency, try-it forms",
                  "text/html"),
        "/docs": page("docs", "This document in Swagger UI", "text/html"),
        "/openapi.json": page("openapi", "This document", _JSON),
        "/ui/status": page("ui_status", "What the dashboard shows, as JSON", _JSON),
    }  # fmt: skip


_TENSOR_METADATA = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "inferenceToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "An inference token, when the server is given any (the inference "
            "routes, /openapi.json and the dashboard's /ui/status ask for it then)",
        },
        "adminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "The admin token (--admin-token, LIGEIRO_ADMIN_TOKEN)",
        }
    },
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _TENSOR_METADATA},
                "outputs": {"type": "array", "items": _TENSOR_METADATA},
            },
        },
        "ModelReady": {
            "type": "object",
            "required": ["name", "ready"],
            "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        },
        "ModelStats": {
            "type": "object",
            "required": ["model_stats"],
            "properties": {"model_stats": {"type": "array", "items": {"type": "object"}}},
        },
        "RepositoryModel": {
            "type": "object",
            "required": ["name", "version", "state", "reason"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {"enum": ["READY", "UNAVAILABLE"]},
                "reason": {"type": "string"},
            },
        },
    },
}


def openapi_document(
    models: Sequence[ModelVersion],
    states: Sequence[ModelState],
    sample: Callable[[ModelVersion], Mapping[str, np.ndarray]],
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
    paths = _server_paths(control)
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
        paths |= _embeddings_path(embeddings)
        tags.append({"name": "openai"})
    if pages:
        paths |= _page_paths()
    description = "KServe V2 (Open Inference Protocol) REST, per-model `:predict`, and more."
    if failed:
        description += "\n\nModels that failed to load:\n\n" + "\n".join(failed)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "ligeiro", "version": version, "description": description},
        "tags": tags,
        "paths": paths,
        "components": _COMPONENTS,
        # No token, or an inference token if the server has them (the repository API's
        # operations name the admin token instead).
        "security": [{}, {"inferenceToken": []}],
    }
