"""Loaded models: which versions serve, which failed and why, and how they change.

A change (a reload, a new version on disk, an unload) happens in two steps so that a
server never serves a half-loaded model: ``prepare`` loads and warms what changed on
the side (slow; any thread) and ``commit`` switches to it at once (on the thread that
serves), returning the versions that no longer serve. Those finish the requests they
have (``Usage``) before they are closed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import msgspec

from ..errors import LigeiroError, ModelLoadError, ModelNotFoundError, ModelNotReadyError
from ..runtime.onnx import OnnxRuntime
from ..runtime.pipeline import PipelineRuntime, Step
from ..runtime.providers import DEFAULT_PROVIDERS, ProviderOptions
from ..runtime.python import PythonRuntime
from ..scheduling.policy import BatchingPolicy
from .config import CONFIG_FILE, ModelConfig, TensorConfig, load_config
from .layout import MODEL_FILE, ModelFolder, discover
from .warmup import warm_up

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from pathlib import Path

    from collections.abc import Sequence

    from ..runtime.base import Runtime, TensorSpec

__all__ = ["DISABLED", "ModelState", "ModelVersion", "Registry", "Staged", "Usage"]

logger = logging.getLogger(__name__)

# skl2onnx's default output names: used when config.toml does not name the outputs.
_LABEL_OUTPUT = "output_label"
_PROBABILITY_OUTPUT = "output_probability"
# Where TensorRT engines go unless [runtime] engine_cache says: a hidden folder of the
# repository, which is neither a model nor watched.
ENGINE_CACHE = ".engine-cache"
# A model on a GPU without a [batching] section: run off the event loop, in batches a
# GPU runs in about the time of one row, two at once (on two CUDA streams) so that one
# batch's copies and the next one's gathering overlap the other's kernels.
GPU_BATCHING = BatchingPolicy(
    max_batch_size=256, max_queue_delay_us=1000, max_queue_size=8192, instances=2
)
# The same for a model with fixed shapes (no batch axis): one request per run.
GPU_UNBATCHED = BatchingPolicy(max_batch_size=1, max_queue_size=8192, run_on="thread")
_GPU_NAMES = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@final
class Usage:
    """The requests a model version is serving now, and who waits for the last to end."""

    __slots__ = ("active", "on_idle")

    def __init__(self) -> None:
        self.active = 0
        self.on_idle: Callable[[], None] | None = None

    def leave(self) -> None:
        self.active -= 1
        if not self.active and self.on_idle is not None:
            self.on_idle()


@dataclass(frozen=True, slots=True, eq=False)
class ModelVersion:
    """One loaded, servable version of a model (compared and hashed by identity)."""

    name: str
    version: str
    config: ModelConfig
    runtime: Runtime
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    label_output: str | None = None
    probability_output: str | None = None
    # The execution provider it runs on (ONNX Runtime's name; empty when not ONNX), and
    # why that is not the first one its config asked for (empty when it is).
    provider: str = ""
    fallback: str = ""
    # The batching it gets when its config has no [batching] (a GPU's).
    default_batching: BatchingPolicy | None = None
    output_names: tuple[str, ...] = field(init=False)
    usage: Usage = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_names", tuple(self.outputs))
        object.__setattr__(self, "usage", Usage())

    @property
    def batching(self) -> BatchingPolicy | None:
        """How its requests are scheduled: its config's [batching], else the default."""
        policy = self.config.batching
        return self.default_batching if policy is None else policy


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


def _declared(
    where: Path, kind: str, graph: tuple[TensorSpec, ...], declared: list[TensorConfig] | None
) -> dict[str, TensorSpec]:
    """Tensors from config.toml when given (checked against the graph), else the graph's."""
    found = {spec.name: spec for spec in graph}
    if declared is None:
        return found
    specs = {}
    for i, tensor in enumerate(declared):
        spec = tensor.spec()
        actual = found.get(spec.name)
        where_ = f"{where / CONFIG_FILE}: {kind}[{i}] {spec.name!r}"
        if actual is None:
            raise ModelLoadError(
                f"{where_}: the model has no such {kind[:-1]}; it has {', '.join(found)}"
            )
        if actual.dtype != spec.dtype:
            raise ModelLoadError(
                f"{where_}: datatype {tensor.datatype} differs from the graph's {actual.dtype}"
            )
        if len(actual.shape) != len(spec.shape) or not all(
            a in (-1, s) for a, s in zip(actual.shape, spec.shape, strict=True)
        ):
            raise ModelLoadError(
                f"{where_}: shape {list(spec.shape)} does not fit the graph's {list(actual.shape)}"
            )
        specs[spec.name] = spec
    if kind == "inputs" and specs.keys() != found.keys():
        missing = ", ".join(found.keys() - specs.keys())
        raise ModelLoadError(
            f"{where / CONFIG_FILE}: inputs must list every graph input; missing {missing}"
        )
    return specs


def _resolve_output(
    config_value: str | None, default: str, outputs: dict[str, TensorSpec], where: str
) -> str | None:
    if config_value is None:
        return default if default in outputs else None
    if config_value not in outputs:
        raise ModelLoadError(
            f"{where}: no output named {config_value!r}; outputs are {', '.join(outputs)}"
        )
    return config_value


def _runtime(
    folder: ModelFolder,
    version: int,
    config: ModelConfig,
    threads: int,
    resolve: Callable[[str, str | None], ModelVersion] | None,
    providers: Sequence[str],
    engine_cache: Path | None,
) -> Runtime:
    """The runtime ``config.platform`` names, loaded."""
    if config.platform == "python":
        # load_config checks that a Python model declares both.
        assert config.inputs is not None
        assert config.outputs is not None
        return PythonRuntime(
            folder.version_path(version),
            name=folder.name,
            inputs=[t.spec() for t in config.inputs],
            outputs=[t.spec() for t in config.outputs],
            parameters=config.parameters,
        )
    if config.platform == "pipeline":
        assert config.steps is not None  # load_config checks
        where = str(folder.path / CONFIG_FILE)
        steps = []
        for i, step in enumerate(config.steps):
            wanted = None if step.version is None else str(step.version)
            try:
                if resolve is None or step.model == folder.name:
                    raise ModelNotFoundError(f"a pipeline cannot run {step.model!r} here")
                model = resolve(step.model, wanted)
            except (ModelNotFoundError, ModelNotReadyError) as exc:
                raise ModelLoadError(f"{where}: steps[{i}] {step.model!r}: {exc}") from None
            steps.append(Step(model.name, model.runtime, model.inputs, model.outputs))
        declared = None if config.outputs is None else [t.spec() for t in config.outputs]
        return PipelineRuntime(folder.name, where, steps, declared)
    options = config.runtime or ProviderOptions()
    if options.engine_cache is not None:
        engine_cache = folder.path / options.engine_cache
    return OnnxRuntime(
        folder.model_file(version),
        threads=threads,
        providers=options.providers or providers,
        options=options,
        engine_cache=engine_cache,
    )


def load_version(
    folder: ModelFolder,
    version: int,
    config: ModelConfig,
    *,
    threads: int,
    resolve: Callable[[str, str | None], ModelVersion] | None = None,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    engine_cache: Path | None = None,
) -> ModelVersion:
    """Load one version of a model and check its config against the graph.

    ``resolve`` finds a pipeline's steps among the loaded models. ``providers`` are
    the execution providers of an ONNX model whose config names none; TensorRT keeps
    its engines in ``engine_cache`` unless the config names a folder.

    Raises:
        ModelLoadError: naming the file and what is wrong with it.
    """
    runtime = _runtime(folder, version, config, threads, resolve, providers, engine_cache)
    try:
        return _checked(folder, version, config, runtime)
    except ModelLoadError:
        runtime.close()
        raise


def _checked(
    folder: ModelFolder, version: int, config: ModelConfig, runtime: Runtime
) -> ModelVersion:
    inputs = _declared(folder.path, "inputs", runtime.inputs, config.inputs)
    outputs = _declared(folder.path, "outputs", runtime.outputs, config.outputs)
    where = str(folder.path / CONFIG_FILE)
    if config.features is not None:
        (spec, *rest) = inputs.values()
        if rest or len(spec.shape) != 2 or spec.shape[1] not in (-1, len(config.features)):
            raise ModelLoadError(
                f"{where}: features name {len(config.features)} columns, so the model needs one "
                f"input of shape [-1, {len(config.features)}]; it has "
                + ", ".join(f"{s.name} {list(s.shape)}" for s in inputs.values())
            )
    if config.batching is not None and config.batching.max_batch_size > 0:
        unbatchable = [
            f"{kind} {s.name!r} {list(s.shape)}"
            for kind, specs in (("input", inputs), ("output", outputs))
            for s in specs.values()
            if not s.shape or s.shape[0] != -1
        ]
        if unbatchable:
            raise ModelLoadError(
                f"{where}: [batching] needs a variable first (batch) axis on every input and "
                f"output; these have none: {', '.join(unbatchable)}"
            )
    probability = _resolve_output(config.probability_output, _PROBABILITY_OUTPUT, outputs, where)
    if config.labels is not None and probability is not None:
        classes = outputs[probability].shape[-1]
        if classes not in (-1, len(config.labels)):
            raise ModelLoadError(
                f"{where}: {len(config.labels)} labels, "
                f"but output {probability!r} has {classes} classes"
            )
    provider = fallback = ""
    default_batching = None
    if isinstance(runtime, OnnxRuntime):
        provider, fallback = runtime.provider, runtime.fallback
        if provider in _GPU_NAMES:
            tensors = (*inputs.values(), *outputs.values())
            batchable = all(s.shape and s.shape[0] == -1 for s in tensors)
            default_batching = GPU_BATCHING if batchable else GPU_UNBATCHED
            if config.runtime is not None and config.runtime.cuda_graph:
                if config.batching is not None and config.batching.instances > 1:
                    raise ModelLoadError(
                        f"{where}: cuda_graph replays one captured run at a time; "
                        f"[batching] instances is {config.batching.instances}"
                    )
    return ModelVersion(
        name=folder.name,
        version=str(version),
        config=config,
        runtime=runtime,
        inputs=inputs,
        outputs=outputs,
        label_output=_resolve_output(config.label_output, _LABEL_OUTPUT, outputs, where),
        probability_output=probability,
        provider=provider,
        fallback=fallback,
        default_batching=default_batching,
    )


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


def _signature(folder: ModelFolder, version: int) -> tuple[tuple[str, int, int], ...]:
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


@final
class _Split:
    """Smooth weighted round robin over versions: exact shares, evenly interleaved."""

    __slots__ = ("_current", "_targets", "_total")

    def __init__(self, targets: list[tuple[ModelVersion, int]]) -> None:
        self._targets = targets
        self._current = [0] * len(targets)
        self._total = sum(weight for _, weight in targets)

    def pick(self) -> ModelVersion:
        current = self._current
        best = 0
        for i, (_, weight) in enumerate(self._targets):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return self._targets[best][0]


@dataclass(slots=True)
class _Model:
    name: str
    ready: dict[str, ModelVersion] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    default: ModelVersion | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)
    # Why a ready version is not the one on disk (a reload of it failed).
    notes: dict[str, str] = field(default_factory=dict)
    config: ModelConfig | None = None
    # A config given through the repository API instead of config.toml.
    override: ModelConfig | None = None
    signatures: dict[str, tuple[tuple[str, int, int], ...]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    split: _Split | None = None

    def route(self) -> None:
        """Set the default version, labels and traffic split from the config."""
        self.default = self.ready[max(self.ready, key=int)] if self.ready else None
        config = self.config or ModelConfig()
        self.labels = {k: str(v) for k, v in (config.version_labels or {}).items()}
        self.split = None
        if config.traffic:
            targets = []
            for key, weight in config.traffic.items():
                version = self.labels.get(key, key)
                if weight and version in self.ready:
                    targets.append((self.ready[version], weight))
                elif weight:
                    logger.warning(
                        "model %r: traffic for %s: version %s is not ready; its share goes "
                        "to the others",
                        self.name,
                        key,
                        version,
                    )
            if targets:
                self.split = _Split(targets)


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
    seconds = model.load_seconds
    states = [
        ModelState(
            model.name,
            v,
            True,
            model.notes.get(v, ""),
            seconds.get(v, 0.0),
            loaded.provider,
            loaded.fallback,
        )
        for v, loaded in model.ready.items()
    ]
    states += [
        ModelState(model.name, v, False, r, seconds.get(v, 0.0))
        for v, r in model.failed.items()
        if v not in model.ready
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
        staged = self._stage({f.name: f for f in folders}, {}, warm=False)
        self.commit(staged)

    # -- changes ------------------------------------------------------------------------

    def prepare(
        self,
        names: Iterable[str],
        *,
        override: Mapping[str, ModelConfig] | None = None,
        unload: bool = False,
        warm: bool = True,
    ) -> Staged:
        """Load (or unload) models ``names`` as they are on disk now, without serving them.

        Versions whose files and config are unchanged are kept as they are; new or
        changed ones are loaded and warmed up. A model whose new versions all fail keeps
        serving what it served. Pipelines that run any of ``names`` are rebuilt on the
        new versions. A name no longer on disk is removed; ``unload`` makes the models
        unavailable ("unloaded") whatever is on disk. ``override`` replaces a model's
        config.toml (the repository API's load with a config). ``warm`` runs each new
        version once before it is staged.
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
                kept = set(model.ready.values()) if model is not None else set()
                retired += [v for v in old.ready.values() if v not in kept]
        return retired

    def _stage(
        self,
        folders: Mapping[str, ModelFolder | None],
        override: Mapping[str, ModelConfig],
        *,
        warm: bool,
        unload: set[str] | frozenset[str] = frozenset(),
    ) -> Staged:
        started = time.perf_counter()
        staged: dict[str, _Model | None] = {}
        configs: dict[str, ModelConfig | ModelLoadError] = {}
        present: list[ModelFolder] = []
        for name, folder in folders.items():
            if name in unload:
                old = self._models.get(name)
                versions = (old.ready.keys() | old.failed.keys()) if old else {""}
                staged[name] = _Model(name, failed=dict.fromkeys(versions, "unloaded"))
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
        warm: bool,
    ) -> _Model:
        model = _Model(folder.name)
        if isinstance(config, ModelLoadError):
            # The folder or its config is broken: every version fails for that reason.
            for version in folder.versions or ("",):
                model.failed[str(version)] = str(config)
            logger.error("model %r not loaded: %s", folder.name, config)
            return self._keep_serving(model, previous)
        model.config = config
        policy = config.version_policy
        versions = policy.select(folder.versions) if policy is not None else folder.versions
        disabled = config.disabled_versions or {}
        for key, reason in disabled.items():
            if int(key) in folder.versions:
                model.failed[key] = DISABLED + reason
        versions = tuple(v for v in versions if str(v) not in disabled)
        for version in versions:
            key = str(version)
            signature = _signature(folder, version)
            kept = self._unchanged(previous, key, signature, config)
            if kept is not None:
                model.ready[key] = kept
                model.signatures[key] = signature
                model.load_seconds[key] = previous.load_seconds.get(key, 0.0) if previous else 0.0
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
                if warm:
                    warm_up(loaded, folder.path)
            except LigeiroError as exc:
                model.failed[key] = str(exc)
                logger.error("model %r version %d not loaded: %s", folder.name, version, exc)
                # A reload of this version failed: the old one serves on (not a pipeline's,
                # which runs step versions that are being unloaded).
                old = None
                if previous is not None and config.platform != "pipeline":
                    old = previous.ready.get(key)
                if old is not None:
                    model.ready[key] = old
                    model.notes[key] = f"serving the previous load; the new one failed: {exc}"
                    model.signatures[key] = previous.signatures.get(key, ()) if previous else ()
            else:
                model.ready[key] = loaded
                model.signatures[key] = signature
            model.load_seconds[key] = time.perf_counter() - started
        if not versions:
            model.failed[""] = (
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
        signature: tuple[tuple[str, int, int], ...],
        config: ModelConfig,
    ) -> ModelVersion | None:
        """The loaded version to keep, if its files and config are as they were."""
        if previous is None or config.platform == "pipeline":  # a pipeline's steps may differ
            return None
        old = previous.ready.get(key)
        if old is None or key in previous.notes or previous.signatures.get(key) != signature:
            return None
        same = msgspec.structs.replace(old.config, **_ROUTING_KEYS) == msgspec.structs.replace(
            config, **_ROUTING_KEYS
        )
        return old if same else None

    @staticmethod
    def _keep_serving(model: _Model, previous: _Model | None) -> _Model:
        """Route ``model``; if nothing in it is ready, the previous versions serve on."""
        if not model.ready and previous is not None and previous.ready:
            logger.warning(
                "model %r: the new load has no ready version; versions %s serve on",
                model.name,
                ", ".join(previous.ready),
            )
            model.ready = dict(previous.ready)
            model.signatures = dict(previous.signatures)
            model.notes = {
                v: "serving the previous load; the new one failed" for v in previous.ready
            }
            model.config = previous.config
        model.route()
        if model.ready:
            logger.info("model %r ready (versions %s)", model.name, ", ".join(model.ready))
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
                reasons = "; ".join(model.failed.values())
                raise ModelNotReadyError(f"model {name!r} is not ready: {reasons}")
            return model.default
        found = model.ready.get(version)
        if found is None and version in model.labels:
            version = model.labels[version]
            found = model.ready.get(version)
        if found is None:
            if version in model.failed:
                raise ModelNotReadyError(
                    f"model {name!r} version {version} is not ready: {model.failed[version]}"
                )
            versions = ", ".join(sorted([*model.ready, *model.failed], key=lambda v: int(v or 0)))
            labels = f"; labels: {', '.join(model.labels)}" if model.labels else ""
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; versions: {versions or 'none'}{labels}"
            )
        return found

    def names(self) -> list[str]:
        """The models the registry knows, loaded or not."""
        return sorted(self._models)

    def index(self) -> list[ModelState]:
        """Every model version with its state, sorted by model then version."""
        states = [s for model in self._models.values() for s in _states(model)]
        return sorted(states, key=lambda s: (s.name, int(s.version or 0)))

    def close(self) -> None:
        for model in self._models.values():
            for version in model.ready.values():
                version.runtime.close()
        self._models.clear()
