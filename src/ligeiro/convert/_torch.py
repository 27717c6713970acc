"""A PyTorch module to ONNX with ``torch.onnx.export``.

PyTorch is not part of the ``convert`` extra (it is large): ``pip install torch==2.13.0``.
The module takes one float32 tensor ``[N, F]`` (the sample's numeric columns) and
returns one tensor ``[N, …]``: the graph has input ``float_input`` and output
``output``, batch axis dynamic. Nothing says whether the output holds logits, scores or
probabilities, so it is compared by value only and ``config.toml`` names no labels.

The exporter is the TorchScript one (``dynamo=False``): the ``torch.export`` based one,
the default since PyTorch 2.9, needs the ``onnxscript`` package besides.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConversionError
from ._converted import FLOAT_INPUT, ConvertedModel

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["OUTPUT", "convert_torch_module", "is_torch_module"]

logger = logging.getLogger(__name__)

OUTPUT = "output"
_OPSET = 17


def is_torch_module(model: object) -> bool:
    """Whether ``model`` is a ``torch.nn.Module`` (without importing torch for others)."""
    if not any(c.__module__.startswith("torch") for c in type(model).__mro__):
        return False
    import torch

    return isinstance(model, torch.nn.Module)


def convert_torch_module(module: Any, sample: pd.DataFrame | np.ndarray) -> ConvertedModel:
    """Export ``module`` (in eval mode) and run it on ``sample`` for the check.

    Raises:
        ConversionError: the sample is not numeric, or the export fails.
    """
    import torch

    features = None
    if hasattr(sample, "columns"):
        frame: Any = sample
        features = [str(c) for c in frame.columns]
        try:
            # A copy: pandas hands out read-only views, which torch warns about.
            x = np.array(frame.to_numpy(dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise ConversionError(f"a PyTorch module needs numeric columns: {exc}") from None
    else:
        x = np.asarray(sample)
        if x.dtype.kind not in "biuf":
            raise ConversionError(f"a PyTorch module needs a numeric sample, got {x.dtype}")
        x = x.astype(np.float32)
    if x.ndim != 2:
        raise ConversionError(f"the sample must be 2-D [rows, features], got shape {x.shape}")
    module.eval()
    tensor = torch.from_numpy(x)
    with torch.no_grad():
        reference = module(tensor)
    if not isinstance(reference, torch.Tensor):
        raise ConversionError(f"the module must return one tensor, got {type(reference).__name__}")
    buffer = io.BytesIO()
    logger.info("exporting %s with torch.onnx.export", type(module).__name__)
    with warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation on every call; the
        # replacement needs onnxscript, which this extra does not install (module doc).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings(
            "ignore", message=r"You are using the legacy TorchScript-based ONNX export"
        )
        warnings.filterwarnings("ignore", message=r"The feature will be removed")
        try:
            torch.onnx.export(
                module,
                (tensor,),
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object
                input_names=[FLOAT_INPUT],
                output_names=[OUTPUT],
                dynamic_axes={FLOAT_INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=_OPSET,
                dynamo=False,
            )
        except Exception as exc:  # the exporter raises many kinds; say which module failed
            raise ConversionError(
                f"torch.onnx.export failed for {type(module).__name__}: {exc}"
            ) from exc
    import onnx

    return ConvertedModel(
        onnx.load_from_string(buffer.getvalue()),
        {FLOAT_INPUT: x},
        {OUTPUT: reference.numpy()},
        features=features,
        notes=["PyTorch module exported with torch.onnx.export (TorchScript exporter)"],
    )
