"""Loaded models: which versions serve, which failed and why, and how they change.

A change (a reload, a new version on disk, an unload) happens in two steps so that a
server never serves a half-loaded model: ``prepare`` loads and warms what changed on
the side (slow; any thread) and ``commit`` switches to it at once (on the thread that
serves), returning the versions that no longer serve. Those finish the requests they
have (``Usage``) before they are closed.

Loading and checking one version is ``repository.version``; where the requests that
name no version go is ``repository.routing``. Here, each model keeps one record per
version (``_Version``): what serves, why its last load failed, how long it took.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, final

import msgspec

from ..errors import LigeiroError, ModelLoadError, ModelNotFoundError, ModelNotReadyError
from ..runtime.providers import DEFAULT_PROVIDERS
from .config import CONFIG_FILE, ModelConfig, load_config
from .layout import MODEL_FILE, ModelFolder, discover
from .routing import Routes, WeightedRoundRobin
from .version import ModelVersion, Usage, load_version

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from pathlib import Path

    from ..scheduling.policy import BatchingPolicy

__all__ = [
    "DISABLED",
    "ModelState",
    "ModelVersion",
    "Registry",
    "Staged",
    "Usage",
    "WarmUp",
    "load_version",
]

logger = logging.getLogger(__name__)

# Where TensorRT engines go unless [runtime] engine_cache says: a hidden folder of the
# repository, which is neither a model nor watched.
ENGINE_CACHE = ".engine-cache"
# What a version folder holds: each file's path, size and modification time.
Signature = tuple[tuple[str, int, int], ...]


class WarmUp(Protocol):
    """Runs a new version once before it serves (``ligeiro.warmup.warm_up`` fits).

    Raises:
        ModelLoadError: the version cannot serve (its warm-up run failed).
    """

    def __call__(self, model: ModelVersion, folder: Path, /) -> None: ...


@dataclass(frozen=True, slots=True)
class ModelState:
    """A version's place in the repository index: ready, or the reason it is not."""

    name: str
    version: str
    is_ready: bool
    reason: str = ""
    # Seconds it took to load (or to fail to load).
    load_seconds: float = 0.0
    # A ready ONNX version's execution provider, and why not its config's first one.
    provider: str = ""
    fallback: str = ""

    @property
    def index_reason(self) -> str:
        """What the repository index says: why it is not ready, or where it fell back."""
        return self.reason or self.fallback


# Config keys that change which versions serve and how requests reach them, not what a
# loaded version is: a version whose files and other keys are unchanged is kept.
_ROUTING_KEYS = {
    "version_policy": None,
    "version_labels": None,
    "traffic": None,
    "disabled_versions": None,
}
# How the index names a version that ``disabled_versions`` keeps from loading.
DISABLED = "disabled: "


def _signature(folder: ModelFolder, version: int) -> Signature:
    """What a version folder holds: each file's path, size and modification time."""
    base = folder.version_path(version)
    found = []
    for directory, _, files in os.walk(base):
        for name in files:
            path = os.path.join(directory, name)
            try:
                stat = os.stat(path)
            except OSError:  # removed while we looked: the next change event sees it
                continue
            found.append((os.path.relpath(path, base), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))



@dataclass(slots=True)
class _Version:
    """What the registry knows of one version of a model.

    ``serving`` is the loaded version that serves (``None``: none does); ``failure``
    why its latest load failed or why it does not load (``None``: it did not fail).
    Both are set when a reload failed and the previous load serves on; ``note`` then
    says so in the index.
    """

    serving: ModelVersion | None = None
    failure: str | None = None
    note: str = ""
    load_seconds: float = 0.0
    signature: Signature | None = None


@dataclass(slots=True)
class _Model:
    name: str
    versions: dict[str, _Version] = field(default_factory=dict)
    config: ModelConfig | None = None
    # A config given through the repository API instead of config.toml.
    override: ModelConfig | None = None
    # From ``route``: the requests that name no version, and the version labels.
    default: ModelVersion | None = None
    labels: dict[str, str] = field(default_factory=dict)
    split: WeightedRoundRobin | None = None

    def entry(self, key: str) -> _Version:
        """The record of version ``key``, made empty if there is none yet."""
        record = self.versions.get(key)
        if record is None:
            record = self.versions[key] = _Version()
        return record

    def ready(self) -> dict[str, ModelVersion]:
        """The versions that serve, by number."""
        return {k: v.serving for k, v in self.versions.items() if v.serving is not None}

    def failures(self) -> list[str]:
        return [v.failure for v in self.versions.values() if v.failure is not None]

    def route(self) -> None:
        """Set the default version, labels and traffic split from the config."""
        routes = Routes(self.name, self.config, self.ready())
        self.default, self.labels, self.split = routes.default, routes.labels, routes.split


@final
class Staged:
    """Models loaded by ``Registry.prepare``, not yet serving: ``None`` removes one."""

    __slots__ = ("models", "seconds")

    def __init__(self, models: dict[str, _Model | None], seconds: float) -> None:
        self.models = models
        # How long loading and warming took.
        self.seconds = seconds

    def states(self) -> list[ModelState]:
        """What the change would serve, for the API's answer."""
        return [s for m in self.models.values() if m is not None for s in _states(m)]


def _states(model: _Model) -> list[ModelState]:
    """The ready versions first, then those that are not."""
    versions = model.versions.items()
    states = [
        ModelState(
            model.name,
            v,
            True,
            r.note,
            r.load_seconds,
            r.serving.provider,
            r.serving.fallback,
        )
        for v, r in versions
        if r.serving is not None
    ]
    states += [
        ModelState(model.name, v, False, r.failure, r.load_seconds)
        for v, r in versions
        if r.serving is None and r.failure is not None
    ]
    return states


@final
class Registry:
    """The models of one repository, loaded.

    Every version a model's ``version_policy`` selects (all, by default) is loaded;
    one that fails is logged and kept as not-ready with its reason, and never stops the
    others. A model's default version is its highest ready one; ``traffic`` splits the
    requests that name no version.

    Args:
        root: the repository folder.
        threads: intra-op threads per model session.
        batching: per model name, a ``[batching]`` section that replaces the one in
            its ``config.toml`` (the server's settings; ``max_batch_size = 0`` turns
            batching off).
        providers: the execution providers of the ONNX models whose config.toml
            names none (``--providers``), in priority order.
        model_name: serve ``root`` itself as this one model (a model folder, not a
            repository).
    """

    def __init__(
        self,
        root: Path,
        *,
        threads: int = 1,
        batching: Mapping[str, BatchingPolicy] | None = None,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        model_name: str | None = None,
    ) -> None:
        self.root = root
        self.model_name = model_name
        self.threads = threads
        self.providers = tuple(providers)
        self._batching = dict(batching or {})
        self._models: dict[str, _Model] = {}
        folders = discover(root, model_name)
        for name in self._batching.keys() - {f.name for f in folders}:
            logger.warning("batching settings for %r: the repository has no such model", name)
        staged = self._stage({f.name: f for f in folders}, {}, warm=None)
        self.commit(staged)

    # -- changes ------------------------------------------------------------------------

    def prepare(
        self,
        names: Iterable[str],
        *,
        override: Mapping[str, ModelConfig] | None = None,
        unload: bool = False,
        warm: WarmUp | None = None,
    ) -> Staged:
        """Load (or unload) models ``names`` as they are on disk now, without serving them.

        Versions whose files and config are unchanged are kept as they are; new or
        changed ones are loaded and warmed up. A model whose new versions all fail keeps
        serving what it served. Pipelines that run any of ``names`` are rebuilt on the
        new versions. A name no longer on disk is removed; ``unload`` makes the models
        unavailable ("unloaded") whatever is on disk. ``override`` replaces a model's
        config.toml (the repository API's load with a config). ``warm`` runs each new
        version once before it is staged (``ligeiro.warmup.warm_up``; ``None``: not
        warmed); a version whose warm-up fails does not load.
        """
        wanted = set(names)
        # Pipelines that run a changed model, however indirectly, are rebuilt with it.
        grown = True
        while grown:
            grown = False
            for model in self._models.values():
                steps = {s.model for s in (model.config.steps or ())} if model.config else set()
                if model.name not in wanted and steps & wanted:
                    wanted.add(model.name)
                    grown = True
        on_disk = {f.name: f for f in discover(self.root, self.model_name)}
        return self._stage(
            {n: on_disk.get(n) for n in wanted},
            dict(override or {}),
            warm=warm,
            unload=set(names) if unload else frozenset(),
        )

    def commit(self, staged: Staged) -> list[ModelVersion]:
        """Serve what ``staged`` holds, at once; return the versions no longer served."""
        retired: list[ModelVersion] = []
        for name, model in staged.models.items():
            old = self._models.get(name)
            if model is None:
                self._models.pop(name, None)
            else:
                self._models[name] = model
            if old is not None:
                kept = set(model.ready().values()) if model is not None else set()
                retired += [v for v in old.ready().values() if v not in kept]
        return retired

    def _stage(
        self,
        folders: Mapping[str, ModelFolder | None],
        override: Mapping[str, ModelConfig],
        *,
        warm: WarmUp | None,
        unload: set[str] | frozenset[str] = frozenset(),
    ) -> Staged:
        started = time.perf_counter()
        staged: dict[str, _Model | None] = {}
        configs: dict[str, ModelConfig | ModelLoadError] = {}
        present: list[ModelFolder] = []
        for name, folder in folders.items():
            if name in unload:
                old = self._models.get(name)
                versions = old.versions if old else ("",)
                staged[name] = _Model(name, {v: _Version(failure="unloaded") for v in versions})
            elif folder is None:
                staged[name] = None  # gone from disk
            else:
                old = self._models.get(name)
                given = override.get(name) or (old.override if old else None)
                configs[name] = self._read_config(folder, given)
                present.append(folder)

        def resolve(name: str, version: str | None) -> ModelVersion:
            if name in staged:
                model = staged[name]
                if model is None:
                    raise ModelNotFoundError(f"unknown model {name!r} (gone from the repository)")
                return self._pick(model, version)
            return self.get(name, version)

        for folder in self._load_order(present, configs):
            model = self._load_model(
                folder, configs[folder.name], self._models.get(folder.name), resolve, warm
            )
            model.override = override.get(folder.name) or (
                old.override if (old := self._models.get(folder.name)) else None
            )
            staged[folder.name] = model
        return Staged(staged, time.perf_counter() - started)

    def _read_config(
        self, folder: ModelFolder, given: ModelConfig | None
    ) -> ModelConfig | ModelLoadError:
        """The folder's config (with the server's batching), or why it cannot load."""
        try:
            if not folder.versions:
                raise ModelLoadError(
                    f"{folder.path}: no version folders (expected {folder.path}/1/{MODEL_FILE})"
                )
            config = given if given is not None else load_config(folder.path)
        except ModelLoadError as exc:
            return exc
        batching = self._batching.get(folder.name)
        if batching is not None:
            config = msgspec.structs.replace(config, batching=batching)
        return config

    @staticmethod
    def _load_order(
        folders: list[ModelFolder], configs: Mapping[str, ModelConfig | ModelLoadError]
    ) -> list[ModelFolder]:
        """Folders in an order where a pipeline comes after the models it runs."""
        steps = {
            name: [s.model for s in config.steps or ()]
            for name, config in configs.items()
            if isinstance(config, ModelConfig)
        }
        ordered: list[ModelFolder] = []
        placed: set[str] = set()
        pending = list(folders)
        while pending:
            ready = [
                f
                for f in pending
                if all(s in placed or s not in configs for s in steps.get(f.name, ()))
            ]
            # A cycle: load the rest anyway; their steps are then reported missing.
            for folder in ready or pending:
                ordered.append(folder)
                placed.add(folder.name)
            pending = [f for f in pending if f.name not in placed]
        return ordered

    def _load_model(
        self,
        folder: ModelFolder,
        config: ModelConfig | ModelLoadError,
        previous: _Model | None,
        resolve: Callable[[str, str | None], ModelVersion],
        warm: WarmUp | None,
    ) -> _Model:
        model = _Model(folder.name)
        if isinstance(config, ModelLoadError):
            # The folder or its config is broken: every version fails for that reason.
            for version in folder.versions or ("",):
                model.entry(str(version)).failure = str(config)
            logger.error("model %r not loaded: %s", folder.name, config)
            return self._keep_serving(model, previous)
        model.config = config
        policy = config.version_policy
        versions = policy.select(folder.versions) if policy is not None else folder.versions
        disabled = config.disabled_versions or {}
        for key, reason in disabled.items():
            if int(key) in folder.versions:
                model.entry(key).failure = DISABLED + reason
        versions = tuple(v for v in versions if str(v) not in disabled)
        for version in versions:
            key = str(version)
            signature = _signature(folder, version)
            record = model.entry(key)
            kept = self._unchanged(previous, key, signature, config)
            if kept is not None:
                record.serving, record.signature = kept.serving, signature
                record.load_seconds = kept.load_seconds
                continue
            started = time.perf_counter()
            try:
                loaded = load_version(
                    folder,
                    version,
                    config,
                    threads=self.threads,
                    resolve=resolve,
                    providers=self.providers,
                    engine_cache=self.root / ENGINE_CACHE / folder.name / key,
                )
                if loaded.fallback:
                    logger.warning(
                        "model %r version %d %s", folder.name, version, loaded.fallback
                    )
                if warm is not None:
                    warm(loaded, folder.path)
            except LigeiroError as exc:
                record.failure = str(exc)
                logger.error("model %r version %d not loaded: %s", folder.name, version, exc)
                # A reload of this version failed: the old one serves on (not a pipeline's,
                # which runs step versions that are being unloaded).
                old = None
                if previous is not None and config.platform != "pipeline":
                    old = previous.versions.get(key)
                if old is not None and old.serving is not None:
                    record.serving = old.serving
                    record.note = f"serving the previous load; the new one failed: {exc}"
                    record.signature = old.signature or ()
            else:
                record.serving, record.signature = loaded, signature
            record.load_seconds = time.perf_counter() - started
        if not versions:
            model.entry("").failure = (
                f"{folder.path / CONFIG_FILE}: version_policy selects none of the versions "
                f"on disk ({', '.join(map(str, folder.versions))})"
            )
        # A pipeline never serves on from its previous load: that one runs step versions
        # which are being unloaded.
        return self._keep_serving(model, previous if config.platform != "pipeline" else None)

    @staticmethod
    def _unchanged(
        previous: _Model | None,
        key: str,
        signature: Signature,
        config: ModelConfig,
    ) -> _Version | None:
        """The record of the loaded version to keep, if its files and config are as they were."""
        if previous is None or config.platform == "pipeline":  # a pipeline's steps may differ
            return None
        old = previous.versions.get(key)
        if old is None or old.serving is None or old.note or old.signature != signature:
            return None
        same = msgspec.structs.replace(
            old.serving.config, **_ROUTING_KEYS
        ) == msgspec.structs.replace(config, **_ROUTING_KEYS)
        return old if same else None

    @staticmethod
    def _keep_serving(model: _Model, previous: _Model | None) -> _Model:
        """Route ``model``; if nothing in it is ready, the previous versions serve on."""
        serving = previous.ready() if previous is not None else {}
        if serving and not model.ready():
            logger.warning(
                "model %r: the new load has no ready version; versions %s serve on",
                model.name,
                ", ".join(serving),
            )
            assert previous is not None
            versions = {}
            for key, loaded in serving.items():
                new = model.versions.get(key)
                versions[key] = _Version(
                    serving=loaded,
                    failure=new.failure if new is not None else None,
                    note="serving the previous load; the new one failed",
                    load_seconds=new.load_seconds if new is not None else 0.0,
                    signature=previous.versions[key].signature,
                )
            for key, new in model.versions.items():
                versions.setdefault(key, new)
            model.versions = versions
            model.config = previous.config
        model.route()
        ready = model.ready()
        if ready:
            logger.info("model %r ready (versions %s)", model.name, ", ".join(ready))
        return model

    # -- serving ------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The version to serve: the one named (a number or a label), or the default.

        Without a version, a model with ``traffic`` picks by the weights.

        Raises:
            ModelNotFoundError: no such model, or no such version of it.
            ModelNotReadyError: the version (or every version) failed to load.
        """
        model = self._models.get(name)
        if model is None:
            known = ", ".join(sorted(self._models)) or "no models"
            raise ModelNotFoundError(f"unknown model {name!r}; the repository has {known}")
        return self._pick(model, version)

    @staticmethod
    def _pick(model: _Model, version: str | None) -> ModelVersion:
        name = model.name
        if version is None:
            if model.split is not None:
                return model.split.pick()
            if model.default is None:
                reasons = "; ".join(model.failures())
                raise ModelNotReadyError(f"model {name!r} is not ready: {reasons}")
            return model.default
        record = model.versions.get(version)
        if (record is None or record.serving is None) and version in model.labels:
            version = model.labels[version]
            record = model.versions.get(version)
        if record is None or record.serving is None:
            if record is not None and record.failure is not None:
                raise ModelNotReadyError(
                    f"model {name!r} version {version} is not ready: {record.failure}"
                )
            versions = ", ".join(sorted(model.versions, key=lambda v: int(v or 0)))
            labels = f"; labels: {', '.join(model.labels)}" if model.labels else ""
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; versions: {versions or 'none'}{labels}"
            )
        return record.serving

    def names(self) -> list[str]:
        """The models the registry knows, loaded or not."""
        return sorted(self._models)

    def index(self) -> list[ModelState]:
        """Every model version with its state, sorted by model then version."""
        states = [s for model in self._models.values() for s in _states(model)]
        return sorted(states, key=lambda s: (s.name, int(s.version or 0)))

    def close(self) -> None:
        for model in self._models.values():
            for version in model.ready().values():
                version.runtime.close()
        self._models.clear()

