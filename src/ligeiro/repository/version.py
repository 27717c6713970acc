"""One version of a model, loaded and checked: its runtime, signature and routing hints.

``load_version`` builds the runtime its config names (an ONNX graph, the folder's
Python code, a pipeline of other loaded models) and checks the config against what
the runtime reports; ``ModelVersion`` is what serves. The registry
(``repository.registry``) decides which versions load and when they serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from ..errors import ModelLoadError, ModelNotFoundError, ModelNotReadyError
from ..runtime.onnx import OnnxRuntime
from ..runtime.pipeline import PipelineRuntime, Step
from ..runtime.providers import DEFAULT_PROVIDERS, ProviderOptions
from ..runtime.python import PythonRuntime
from ..scheduling.policy import BatchingPolicy
from .config import CONFIG_FILE, ModelConfig, TensorConfig

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    import numpy as np

    from ..runtime.base import Runtime, TensorSpec
    from .layout import ModelFolder

__all__ = ["GPU_BATCHING", "GPU_UNBATCHED", "ModelVersion", "Usage", "load_version"]

# skl2onnx's default output names: used when config.toml does not name the outputs.
_LABEL_OUTPUT = "output_label"
_PROBABILITY_OUTPUT = "output_probability"
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
    # The dtype every input has, if they share one (the typed V2 decode's, per request).
    input_dtype: np.dtype | None = field(init=False)
    usage: Usage = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_names", tuple(self.outputs))
        dtypes = {spec.dtype for spec in self.inputs.values()}
        object.__setattr__(self, "input_dtype", dtypes.pop() if len(dtypes) == 1 else None)
        object.__setattr__(self, "usage", Usage())

    @property
    def batching(self) -> BatchingPolicy | None:
        """How its requests are scheduled: its config's [batching], else the default."""
        policy = self.config.batching
        return self.default_batching if policy is None else policy



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
