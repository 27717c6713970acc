"""The parts of the OpenAPI document that do not depend on the models: the building
blocks (errors, bodies, nullable types), the server's own routes (health, metadata,
metrics, the repository API), ``/v1/embeddings``, the pages, and the components.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "COMPONENTS",
    "INFER_ERRORS",
    "JSON",
    "MODEL_ERRORS",
    "NUMBER_OR_NULL",
    "PARAMETERS",
    "STRING_OR_NULL",
    "body",
    "embeddings_path",
    "errors",
    "ok",
    "page_paths",
    "server_paths",
]

JSON = "application/json"
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
NUMBER_OR_NULL: dict[str, Any] = {"anyOf": [{"type": "number"}, {"type": "null"}]}
# V2 parameters: an object, or null (as absent).
PARAMETERS: dict[str, Any] = {"anyOf": [{"type": "object"}, {"type": "null"}]}
STRING_OR_NULL: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
INFER_ERRORS = ("400", "404", "413", "415", "429", "503", "504")
MODEL_ERRORS = ("404", "503")


def errors(statuses: Iterable[str]) -> dict[str, Any]:
    return {
        s: {"description": _ERRORS[s], "content": {JSON: {"schema": _ERROR}}} for s in statuses
    }


def ok(schema: dict[str, Any], description: str, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {JSON: media}}


def body(schema: dict[str, Any], example: Any = None, required: bool = True) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": required, "content": {JSON: media}}


def server_paths(control: bool) -> dict[str, Any]:
    def get(path: str, operation_id: str, summary: str, schema: dict[str, Any]) -> Any:
        operation: dict[str, Any] = {
            "tags": ["server"],
            "operationId": operation_id,
            "summary": summary,
            "responses": {"200": ok(schema, summary)},
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
            "responses": {"200": ok(index, "The model's versions now"), **errors(change_errors)},
        }
        if control:  # else it answers 403 whatever the token
            operation["security"] = admin
        if verb == "load":
            operation["requestBody"] = body(
                {
                    "type": "object",
                    "properties": {
                        "parameters": {
                            # No "type": parameters that are not an object are ignored.
                            "description": "Load parameters (not an object: none)",
                            "properties": {
                                "config": STRING_OR_NULL
                                | {"description": "The model's config as a JSON object"}
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
            "requestBody": body(
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
            "responses": {"200": ok(index, "The index"), **errors(("400", "401"))},
        }
    }
    paths["/v2/repository/models/{model_name}/load"] = change("load")
    paths["/v2/repository/models/{model_name}/unload"] = change("unload")
    return paths


def embeddings_path(models: dict[str, int]) -> dict[str, Any]:
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
            "user": STRING_OR_NULL,
        },
    }
    embedding = {
        "type": "object",
        "required": ["object", "index", "embedding"],
        "properties": {
            "object": {"const": "embedding"},
            "index": {"type": "integer"},
            "embedding": {
                "anyOf": [{"type": "array", "items": NUMBER_OR_NULL}, text]
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
                "requestBody": body(
                    request, {"model": next(iter(models)), "input": "The food was delicious."}
                ),
                "responses": {
                    "200": ok(response, "One embedding per input"),
                    **errors(INFER_ERRORS),
                },
            }
        }
    }


def page_paths() -> dict[str, Any]:
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
        "/openapi.json": page("openapi", "This document", JSON),
        "/ui/status": page("ui_status", "What the dashboard shows, as JSON", JSON),
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
COMPONENTS: dict[str, Any] = {
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


