"""The per-model ``config.toml``: validated at load time, errors name the file and field."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from ..errors import ModelLoadError
from ..protocol.datatypes import DATATYPES
from ..runtime.base import TensorSpec
from ..scheduling.policy import BatchingPolicy

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ModelConfig", "TensorConfig", "load_config"]

CONFIG_FILE = "config.toml"


class TensorConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An input or output declared in ``config.toml`` (``[[inputs]]`` / ``[[outputs]]``)."""

    name: str
    datatype: str
    shape: list[int]

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, DATATYPES[self.datatype], tuple(self.shape))


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Everything a model folder's ``config.toml`` may say; every key is optional.

    Attributes:
        platform: the runtime; only ``"onnxruntime"`` today.
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
    if config.platform != "onnxruntime":
        raise ModelLoadError(
            f"{path}: platform {config.platform!r} is not supported; expected 'onnxruntime'"
        )
    for section, tensors in (("inputs", config.inputs), ("outputs", config.outputs)):
        for i, tensor in enumerate(tensors or ()):
            if tensor.datatype not in DATATYPES:
                raise ModelLoadError(
                    f"{path}: {section}[{i}].datatype {tensor.datatype!r} is not one of "
                    f"{', '.join(DATATYPES)}"
                )
    return config
