"""The per-model ``config.toml``: validated at load time, errors name the file and field."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ModelLoadError
from ..protocol.datatypes import DATATYPES
from ..runtime.base import TensorSpec
from ..scheduling.policy import BatchingPolicy

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["PLATFORMS", "ModelConfig", "StepConfig", "TensorConfig", "load_config"]

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


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Everything a model folder's ``config.toml`` may say; every key is optional.

    Attributes:
        platform: what runs the model: ``"onnxruntime"`` (``<version>/model.onnx``),
            ``"python"`` (``<version>/model.py``, see ``ligeiro.runtime.python``) or
            ``"pipeline"`` (``steps``, see ``ligeiro.runtime.pipeline``).
        parameters: free-form settings handed to a Python model when it loads.
        steps: a pipeline's models, in order; each one's outputs feed the later ones
            by tensor name.
        features: names of the columns of the model's single 2-D input, in order;
            they let ``POST /v1/models/{m}:predict`` take ``{"feature": value}`` objects.
        labels: class names, indexed by the label output's integer value.
        label_output: the output holding the predicted class (default ``output_label``
            when the graph has it, as skl2onnx names it).
        probability_output: the ``[N, classes]`` output (default ``output_probability``).
        inputs: declared inputs; when absent they are read from the ONNX graph.
        outputs: declared outputs; when absent they are read from the ONNX graph.
        batching: the ``[batching]`` section: queue requests and run them in batches
            (see ``BatchingPolicy``); absent, each request runs as it arrives.
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


def load_config(folder: Path) -> ModelConfig:
    """Read ``folder/config.toml``, or return the defaults when there is none.

    Raises:
        ModelLoadError: the file is not valid TOML or has unknown or mistyped keys.
    """
    path = folder / CONFIG_FILE
    if not path.is_file():
        return ModelConfig()
    try:
        config = msgspec.toml.decode(path.read_bytes(), type=ModelConfig)
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
    if config.platform == "python" and (config.inputs is None or config.outputs is None):
        raise ModelLoadError(
            f"{path}: a Python model must declare its [[inputs]] and [[outputs]] "
            "(name, datatype, shape)"
        )
    for section, tensors in (("inputs", config.inputs), ("outputs", config.outputs)):
        for i, tensor in enumerate(tensors or ()):
            if tensor.datatype not in DATATYPES:
                raise ModelLoadError(
                    f"{path}: {section}[{i}].datatype {tensor.datatype!r} is not one of "
                    f"{', '.join(DATATYPES)}"
                )
    return config
