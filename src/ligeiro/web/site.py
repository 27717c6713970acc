"""The pages for people: ``/`` (the dashboard), ``/docs`` (Swagger UI), ``/openapi.json``.

Every page and asset ships inside the package (``static/``) and is served from memory;
nothing is loaded from another origin (the Content-Security-Policy says so to the
browser too). ``routes()`` is the one table of what this module answers, each entry
marked with the token it needs, so that the transport can check it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, final

import msgspec
import numpy as np

from .. import __version__
from ..errors import LigeiroError
from ..protocol.codec import PLATFORMS
from ..protocol.datatypes import datatype_of
from ..protocol.embeddings import embedding_output
from ..protocol.openapi import openapi_document, plain, predict_example
from ..warmup import generated_sample, sample

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..engine import Engine
    from ..metrics import Metrics
    from ..repository.registry import ModelState, ModelVersion
    from ..runtime.base import TensorSpec

__all__ = ["Page", "Site"]

logger = logging.getLogger(__name__)

# Same origin only: scripts and styles from the package, answers from this server.
_SECURITY = (
    b"content-security-policy: default-src 'self'; img-src 'self' data:; "
    b"style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
    b"form-action 'self'\r\n"
    b"x-content-type-options: nosniff\r\nreferrer-policy: no-referrer\r\n"
)
_NO_CACHE = b"cache-control: no-cache\r\n"
_ASSET_CACHE = b"cache-control: max-age=3600\r\n"
_HTML = b"text/html; charset=utf-8"
_JSON = b"application/json"
_TYPES = {".js": b"text/javascript; charset=utf-8", ".css": b"text/css; charset=utf-8"}
# Served file -> its path under static/.
_ASSETS = {
    b"/ui/dashboard.js": "dashboard.js",
    b"/ui/dashboard.css": "dashboard.css",
    b"/ui/docs.js": "docs.js",
    b"/ui/swagger-ui/swagger-ui-bundle.js": "swagger-ui/swagger-ui-bundle.js",
    b"/ui/swagger-ui/swagger-ui.css": "swagger-ui/swagger-ui.css",
}
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Page:
    """One route of the site: how to make its body, its type and headers.

    ``token`` is the token a request needs: ``"inference"`` for what shows the models
    (``/openapi.json``, ``/ui/status``), as the inference routes; ``"none"`` for the
    static pages and assets, which hold no data: a browser cannot send a bearer token
    when it navigates, so ``/`` must load to let the user enter the token its fetches send.
    """

    body: Callable[[], bytes]
    content_type: bytes
    headers: bytes
    token: Literal["inference", "none"] = "inference"


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _tensors(specs: dict[str, TensorSpec]) -> list[dict[str, object]]:
    return [
        {"name": s.name, "datatype": datatype_of(s.dtype), "shape": list(s.shape)}
        for s in specs.values()
    ]


@final
class Site:
    """The dashboard, the API docs and the OpenAPI document of one server.

    Args:
        engine: the models.
        metrics: the server's metrics (the dashboard's numbers).
        explicit_control: whether the repository API may load and unload models.
        workers: worker processes serving.
        pages: whether to serve the dashboard and ``/docs`` (``--no-ui`` turns them
            off; ``/openapi.json`` is served either way).
    """

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        explicit_control: bool,
        workers: int,
        pages: bool = True,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.explicit_control = explicit_control
        self.workers = workers
        self.pages = pages
        self._files: dict[str, bytes] = {}

    def routes(self) -> dict[bytes, Page]:
        """Every GET route of the site, by path."""
        routes = {b"/openapi.json": Page(self.openapi, _JSON, _NO_CACHE)}
        if not self.pages:
            return routes
        routes |= {
            b"/": Page(lambda: self._file("index.html"), _HTML, _SECURITY + _NO_CACHE, "none"),
            b"/docs": Page(lambda: self._file("docs.html"), _HTML, _SECURITY + _NO_CACHE, "none"),
            b"/ui/status": Page(self.status, _JSON, _NO_CACHE),
        }
        for path, name in _ASSETS.items():
            kind = _TYPES[name[name.rindex(".") :]]
            body = partial(self._file, name)
            routes[path] = Page(body, kind, _ASSET_CACHE, "none")
        return routes

    def _file(self, name: str) -> bytes:
        body = self._files.get(name)
        if body is None:
            body = self._files[name] = _static(name)
        return body

    def _models(self) -> list[ModelVersion]:
        """The default version of each model that serves."""
        models = []
        for name in sorted({s.name for s in self.engine.index() if s.is_ready}):
            try:
                models.append(self.engine.model(name))
            except LigeiroError:  # unloaded between the index and now
                continue
        return models

    def _states(self) -> list[ModelState]:
        """The repository index, with failure reasons naming files inside the repository
        relative to it (a page shows no server paths)."""
        root = f"{self.engine.root.resolve()}/"
        plain = f"{self.engine.root}/"
        return [
            replace(s, reason=s.reason.replace(root, "").replace(plain, "")) if s.reason else s
            for s in self.engine.index()
        ]

    def sample(self, model: ModelVersion) -> dict[str, np.ndarray]:
        """``model``'s warm-up sample (a generated one if its file went missing)."""
        try:
            return sample(model, self.engine.folder(model.name))
        except LigeiroError:
            return generated_sample(model)

    def openapi(self) -> bytes:
        """``GET /openapi.json``: built from the models serving now."""
        document = openapi_document(
            self._models(),
            self._states(),
            self.sample,
            version=__version__,
            control=self.explicit_control,
            pages=self.pages,
        )
        return _encoder.encode(document)

    def status(self) -> bytes:
        """``GET /ui/status``: the models, their state and settings, and the metrics now."""
        ready = {m.name: m for m in self._models()}
        models = []
        for state in self._states():
            entry: dict[str, object] = {
                "name": state.name,
                "version": state.version,
                "ready": state.is_ready,
                "reason": state.reason,
                "load_seconds": round(state.load_seconds, 4),
            }
            model = ready.get(state.name)
            if state.is_ready and model is not None:
                entry["default"] = model.version == state.version
                entry |= self._describe(model)
            models.append(entry)
        return _encoder.encode(
            {
                "server": {"name": "ligeiro", "version": __version__, "workers": self.workers},
                "models": models,
                "metrics": self.metrics.snapshot(),
            }
        )

    def _describe(self, model: ModelVersion) -> dict[str, object]:
        """What the dashboard needs to show ``model`` and build its try-it form."""
        config = model.config
        batching = None if config.batching is None else msgspec.to_builtins(config.batching)
        sample = self.sample(model)
        example, kind = predict_example(model, sample)
        if embedding_output(model) is not None:
            kind = "embedding"
        return {
            "ranges": _ranges(model, sample) if kind == "features" else None,
            "platform": PLATFORMS.get(config.platform, config.platform),
            "batching": batching,
            "inputs": _tensors(model.inputs),
            "outputs": _tensors(model.outputs),
            "features": config.features,
            "labels": config.labels,
            "form": kind,
            "example": example,
        }


def _ranges(model: ModelVersion, sample: dict[str, np.ndarray]) -> dict[str, list[Any]] | None:
    """Each feature's smallest and largest value in ``model``'s warm-up file, if it has one
    (a generated sample is zeros: no range to show)."""
    features = model.config.features
    if model.config.warmup is None or not features or len(sample) != 1:
        return None
    (array,) = sample.values()
    if array.ndim != 2 or array.shape[1] != len(features) or not array.shape[0]:
        return None
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: null
        low, high = plain(np.nanmin(array, axis=0)), plain(np.nanmax(array, axis=0))
    return {f: [lo, hi] for f, lo, hi in zip(features, low, high, strict=True)}
