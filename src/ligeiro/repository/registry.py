"""Loaded models: which versions serve, which failed and why."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import msgspec

from ..errors import LigeiroError, ModelLoadError, ModelNotFoundError, ModelNotReadyError
from ..runtime.onnx import OnnxRuntime
from ..runtime.pipeline import PipelineRuntime, Step
from ..runtime.python import PythonRuntime
from .config import CONFIG_FILE, ModelConfig, TensorConfig, load_config
from .layout import MODEL_FILE, ModelFolder, discover

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from ..runtime.base import Runtime, TensorSpec
    from ..scheduling.policy import BatchingPolicy

__all__ = ["ModelState", "ModelVersion", "Registry"]

logger = logging.getLogger(__name__)

# skl2onnx's default output names: used when config.toml does not name the outputs.
_LABEL_OUTPUT = "output_label"
_PROBABILITY_OUTPUT = "output_probability"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One loaded, servable version of a model."""

    name: str
    version: str
    config: ModelConfig
    runtime: Runtime
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    label_output: str | None = None
    probability_output: str | None = None
    output_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_names", tuple(self.outputs))


@dataclass(frozen=True, slots=True)
class ModelState:
    """A version's place in the repository index: ready, or the reason it is not."""

    name: str
    version: str
    is_ready: bool
    reason: str = ""
    # Seconds it took to load (or to fail to load).
    load_seconds: float = 0.0


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
) -> Runtime:
    """The runtime ``config.platform`` names, loaded."""
    if config.platform == "python":
        # load_config checks that a Python model declares both.
        assert config.inputs is not None
        assert config.outputs is not None
        return PythonRuntime(
            folder.path / str(version),
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
    return OnnxRuntime(folder.model_file(version), threads=threads)


def load_version(
    folder: ModelFolder,
    version: int,
    config: ModelConfig,
    *,
    threads: int,
    resolve: Callable[[str, str | None], ModelVersion] | None = None,
) -> ModelVersion:
    """Load one version of a model and check its config against the graph.

    ``resolve`` finds a pipeline's steps among the loaded models.

    Raises:
        ModelLoadError: naming the file and what is wrong with it.
    """
    runtime = _runtime(folder, version, config, threads, resolve)
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
    return ModelVersion(
        name=folder.name,
        version=str(version),
        config=config,
        runtime=runtime,
        inputs=inputs,
        outputs=outputs,
        label_output=_resolve_output(config.label_output, _LABEL_OUTPUT, outputs, where),
        probability_output=probability,
    )


@dataclass(slots=True)
class _Model:
    name: str
    ready: dict[str, ModelVersion]
    failed: dict[str, str]
    default: ModelVersion | None
    load_seconds: dict[str, float] = field(default_factory=dict)


@final
class Registry:
    """The models of one repository, loaded.

    Every version of every model is loaded; one that fails is logged and kept as
    not-ready with its reason, and never stops the others. A model's default version is
    its highest ready one.

    Args:
        root: the repository folder.
        threads: intra-op threads per model session.
        batching: per model name, a ``[batching]`` section that replaces the one in
            its ``config.toml`` (the server's settings; ``max_batch_size = 0`` turns
            batching off).
    """

    def __init__(
        self,
        root: Path,
        *,
        threads: int = 1,
        batching: Mapping[str, BatchingPolicy] | None = None,
    ) -> None:
        self.root = root
        self.threads = threads
        self._models: dict[str, _Model] = {}
        overrides = dict(batching or {})
        folders = discover(root)
        configs = {f.name: self._read_config(f, overrides.pop(f.name, None)) for f in folders}
        for folder in self._load_order(folders, configs):
            self._models[folder.name] = self._load_model(folder, configs[folder.name])
        for name in overrides:
            logger.warning("batching settings for %r: the repository has no such model", name)

    @staticmethod
    def _read_config(
        folder: ModelFolder, batching: BatchingPolicy | None
    ) -> ModelConfig | ModelLoadError:
        """The folder's config (with the server's batching), or why it cannot load."""
        try:
            if not folder.versions:
                raise ModelLoadError(
                    f"{folder.path}: no version folders (expected {folder.path}/1/{MODEL_FILE})"
                )
            config = load_config(folder.path)
        except ModelLoadError as exc:
            return exc
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

    def _load_model(self, folder: ModelFolder, config: ModelConfig | ModelLoadError) -> _Model:
        model = _Model(folder.name, {}, {}, None)
        if isinstance(config, ModelLoadError):
            # The folder or its config is broken: every version fails for that reason.
            for version in folder.versions or ("",):
                model.failed[str(version)] = str(config)
            logger.error("model %r not loaded: %s", folder.name, config)
            return model
        for version in folder.versions:
            started = time.perf_counter()
            try:
                model.ready[str(version)] = load_version(
                    folder, version, config, threads=self.threads, resolve=self.get
                )
            except LigeiroError as exc:
                model.failed[str(version)] = str(exc)
                logger.error("model %r version %d not loaded: %s", folder.name, version, exc)
            model.load_seconds[str(version)] = time.perf_counter() - started
        if model.ready:
            model.default = model.ready[max(model.ready, key=int)]
            logger.info("model %r ready (versions %s)", folder.name, ", ".join(model.ready))
        return model

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The version to serve: the one named, or the model's default.

        Raises:
            ModelNotFoundError: no such model, or no such version of it.
            ModelNotReadyError: the version (or every version) failed to load.
        """
        model = self._models.get(name)
        if model is None:
            known = ", ".join(sorted(self._models)) or "no models"
            raise ModelNotFoundError(f"unknown model {name!r}; the repository has {known}")
        if version is None:
            if model.default is None:
                reasons = "; ".join(model.failed.values())
                raise ModelNotReadyError(f"model {name!r} is not ready: {reasons}")
            return model.default
        found = model.ready.get(version)
        if found is None:
            if version in model.failed:
                raise ModelNotReadyError(
                    f"model {name!r} version {version} is not ready: {model.failed[version]}"
                )
            versions = ", ".join(sorted([*model.ready, *model.failed], key=int)) or "none"
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; versions: {versions}"
            )
        return found

    def index(self) -> list[ModelState]:
        """Every model version with its state, sorted by model then version."""
        states = []
        for model in self._models.values():
            seconds = model.load_seconds
            states += [
                ModelState(model.name, v, True, "", seconds.get(v, 0.0)) for v in model.ready
            ]
            states += [
                ModelState(model.name, v, False, r, seconds.get(v, 0.0))
                for v, r in model.failed.items()
            ]
        return sorted(states, key=lambda s: (s.name, int(s.version or 0)))

    def close(self) -> None:
        for model in self._models.values():
            for version in model.ready.values():
                version.runtime.close()
        self._models.clear()
