"""The per-model ``config.toml``: validated at load time, errors name the file and field."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from ..errors import ModelLoadError
from ..datatypes import DATATYPES
from ..runtime.base import TensorSpec
from ..runtime.providers import ProviderOptions
from ..scheduling.policy import BatchingPolicy

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "PLATFORMS",
    "ModelConfig",
    "StepConfig",
    "TensorConfig",
    "VersionPolicy",
    "decode_config",
    "load_config",
]

CONFIG_FILE = "config.toml"
# What runs a model: an ONNX graph, the model folder's own Python code, or a chain of
# other models of the repository.
PLATFORMS = ("onnxruntime", "python", "pipeline")


class TensorConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An input or output declared in ``config.toml`` (``[[inputs]]`` / ``[[outputs]]``)."""

    name: str
    datatype: str
    shape: list[int]

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, DATATYPES[self.datatype], tuple(self.shape))


class StepConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One ``[[steps]]`` entry of a pipeline: another model of the repository.

    Attributes:
        model: the model's name.
        version: the version to run; absent, the model's default version.
    """

    model: str
    version: int | None = None


class VersionPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``version_policy``: which version folders load (Triton's three policies).

    Exactly one of: ``{ latest = N }`` (the N highest), ``{ all = true }``, or
    ``{ specific = [1, 3] }``. Without a policy every version loads.
    """

    latest: Annotated[int, msgspec.Meta(gt=0)] | None = None
    all: bool = False
    specific: list[Annotated[int, msgspec.Meta(gt=0)]] | None = None

    def __post_init__(self) -> None:
        chosen = sum((self.latest is not None, self.all, self.specific is not None))
        if chosen != 1:
            raise ValueError(
                "give exactly one of latest = N, all = true, specific = [...]; "
                f"{'none' if chosen == 0 else chosen} given"
            )

    def select(self, versions: tuple[int, ...]) -> tuple[int, ...]:
        """The versions (of those on disk, sorted) that this policy loads."""
        if self.latest is not None:
            return versions[-self.latest :]
        if self.specific is not None:
            return tuple(v for v in versions if v in self.specific)
        return versions


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Everything a model folder's ``config.toml`` may say; every key is optional.

    Attributes:
        platform: what runs the model: ``"onnxruntime"`` (``<version>/model.onnx``),
            ``"python"`` (``<version>/model.py``, see ``ligeiro.runtime.python``) or
            ``"pipeline"`` (``steps``, see ``ligeiro.runtime.pipeline``).
        parameters: free-form settings handed to a Python model when it loads.
        steps: a pipeline's models, in order; each one's outputs feed the later ones
            by tensor name.
        version_policy: which versions load (default: all of them).
        version_labels: names for versions (``{ stable = 1, canary = 2 }``); a
            request may name a label wherever it names a version.
        traffic: shares of the requests that name no version, per version or label
            (``{ "1" = 90, "2" = 10 }``); absent, they go to the highest version.
        warmup: a V2 JSON request file in the model folder that a new version runs
            before it takes traffic; absent, it runs on a generated one-row sample.
        disabled_versions: versions kept on disk that never load, each with the reason
            (``{ "3" = "failed evaluation" }``); the index lists them as unavailable
            with ``disabled: <reason>`` (``ligeiro.federated`` writes them when a
            round's model fails its evaluation gate).
        features: names of the columns of the model's single 2-D input, in order;
            they let ``POST /v1/models/{m}:predict`` take ``{"feature": value}`` objects.
        labels: class names, indexed by the label output's integer value.
        label_output: the output holding the predicted class (default ``output_label``
            when the graph has it, as skl2onnx names it).
        probability_output: the ``[N, classes]`` output (default ``output_probability``).
        inputs: declared inputs; when absent they are read from the ONNX graph.
        outputs: declared outputs; when absent they are read from the ONNX graph.
        batching: the ``[batching]`` section: queue requests and run them in batches
            (see ``BatchingPolicy``); absent, each request runs as it arrives (on a
            GPU provider, in batches of a GPU's size: ``ligeiro.runtime.onnx``).
        runtime: the ``[runtime]`` section of an ONNX model: its execution providers
            (TensorRT, CUDA, CPU) and their options (see ``ProviderOptions``).
    """

    platform: str = "onnxruntime"
    features: list[str] | None = None
    labels: list[str] | None = None
    label_output: str | None = None
    probability_output: str | None = None
    inputs: list[TensorConfig] | None = None
    outputs: list[TensorConfig] | None = None
    batching: BatchingPolicy | None = None
    parameters: dict[str, Any] | None = None
    steps: list[StepConfig] | None = None
    version_policy: VersionPolicy | None = None
    version_labels: dict[str, Annotated[int, msgspec.Meta(gt=0)]] | None = None
    traffic: dict[str, Annotated[int, msgspec.Meta(ge=0)]] | None = None
    warmup: str | None = None
    runtime: ProviderOptions | None = None
    disabled_versions: dict[str, str] | None = None


def load_config(folder: Path) -> ModelConfig:
    """Read ``folder/config.toml``, or return the defaults when there is none.

    Raises:
        ModelLoadError: the file is not valid TOML or has unknown or mistyped keys.
    """
    path = folder / CONFIG_FILE
    if not path.is_file():
        return ModelConfig()
    return decode_config(path.read_bytes(), str(path))


def decode_config(data: bytes, path: str, *, json: bool = False) -> ModelConfig:
    """A config from TOML (or JSON: the repository API's overrides), checked.

    Raises:
        ModelLoadError: naming ``path``: not valid, unknown or mistyped keys, or keys
            that contradict each other.
    """
    try:
        if json:
            config = msgspec.json.decode(data, type=ModelConfig)
        else:
            config = msgspec.toml.decode(data, type=ModelConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    if config.platform not in PLATFORMS:
        raise ModelLoadError(
            f"{path}: platform {config.platform!r} is not supported; expected one of "
            + ", ".join(repr(p) for p in PLATFORMS)
        )
    if (config.platform == "pipeline") != bool(config.steps):
        raise ModelLoadError(
            f"{path}: "
            + (
                "a pipeline needs a non-empty [[steps]] list"
                if config.platform == "pipeline"
                else f"[[steps]] belong to platform = 'pipeline', not {config.platform!r}"
            )
        )
    if config.runtime is not None and config.platform != "onnxruntime":
        raise ModelLoadError(
            f"{path}: [runtime] sets ONNX Runtime's execution providers; it does not apply "
            f"to platform {config.platform!r}"
        )
    if config.platform == "python" and (config.inputs is None or config.outputs is None):
        raise ModelLoadError(
            f"{path}: a Python model must declare its [[inputs]] and [[outputs]] "
            "(name, datatype, shape)"
        )
    if config.traffic is not None:
        labels = config.version_labels or {}
        unknown = [k for k in config.traffic if not k.isdigit() and k not in labels]
        if unknown:
            raise ModelLoadError(
                f"{path}: traffic names {unknown[0]!r}, neither a version number nor a "
                f"label in version_labels ({', '.join(labels) or 'none'})"
            )
        if not any(config.traffic.values()):
            raise ModelLoadError(f"{path}: traffic gives every version a weight of 0")
    bad = [k for k in config.disabled_versions or () if not k.isdigit() or int(k) < 1]
    if bad:
        raise ModelLoadError(
            f"{path}: disabled_versions names {bad[0]!r}; expected a version number"
        )
    for section, tensors in (("inputs", config.inputs), ("outputs", config.outputs)):
        for i, tensor in enumerate(tensors or ()):
            if tensor.datatype not in DATATYPES:
                raise ModelLoadError(
                    f"{path}: {section}[{i}].datatype {tensor.datatype!r} is not one of "
                    f"{', '.join(DATATYPES)}"
                )
    return config
