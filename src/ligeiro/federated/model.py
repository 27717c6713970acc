"""The models a federation trains by their parameters: softmax regression and a small MLP.

A ``Classifier`` is a plain numpy network (standardised inputs → ``hidden`` ReLU
layers → softmax) whose parameters are a list of arrays: that list is what Flower
carries between the server and the devices, and what FedAvg averages. It trains with
mini-batch SGD on cross-entropy (with FedProx's proximal term when asked) and exports
to ONNX with the same outputs as skl2onnx's classifiers (``output_label``,
``output_probability``), so ligeiro serves it like any converted model. Every export is
checked against the numpy model with ``ligeiro.convert.fidelity`` before it is written.

Example:
    >>> import numpy as np
    >>> from ligeiro.federated import Classifier
    >>> model = Classifier(features=4, classes=3, hidden=(8,), seed=0)
    >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int64)
    >>> params = model.train(model.initial(), x, y, epochs=5)
    >>> onnx_bytes = model.to_onnx(params, sample=x)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import numpy as np

from ..convert.fidelity import Fidelity, compare
from ..errors import ConversionError, ModelLoadError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = ["Classifier"]

logger = logging.getLogger(__name__)

# The ONNX opset and IR version written: what onnxruntime >= 1.20 reads.
_OPSET = 17
_IR_VERSION = 9
# Largest difference allowed between the numpy model's probabilities and the ONNX model's.
FIDELITY_TOLERANCE = 1e-4
Params = list[np.ndarray]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


@final
@dataclass(frozen=True)
class Classifier:
    """The shape of a federated classifier; its parameters travel apart from it.

    Args:
        features: input columns.
        classes: output classes.
        hidden: sizes of the ReLU layers (``()``: softmax regression).
        mean, scale: per-column standardisation fixed for the federation (the server
            computes them once from data it may hold; they are not trained).
        seed: for the initial parameters and the order of mini-batches.
    """

    features: int
    classes: int
    hidden: tuple[int, ...] = ()
    mean: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    seed: int = 0
    _sizes: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.features < 1 or self.classes < 2 or any(h < 1 for h in self.hidden):
            raise ValueError(
                f"expected features >= 1, classes >= 2 and positive hidden sizes, got "
                f"features={self.features}, classes={self.classes}, hidden={self.hidden}"
            )
        for name, values in (("mean", self.mean), ("scale", self.scale)):
            if values is not None and len(values) != self.features:
                raise ValueError(f"{name}: expected {self.features} values, got {len(values)}")
        object.__setattr__(self, "_sizes", (self.features, *self.hidden, self.classes))

    # -- parameters ---------------------------------------------------------------------

    def initial(self) -> Params:
        """Fresh parameters (He-scaled weights, zero biases), reproducible by ``seed``."""
        rng = np.random.default_rng(self.seed)
        params: Params = []
        for fan_in, fan_out in zip(self._sizes, self._sizes[1:], strict=False):
            params.append(
                (rng.normal(size=(fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            )
            params.append(np.zeros(fan_out, dtype=np.float32))
        return params

    def check(self, params: Sequence[np.ndarray]) -> Params:
        """``params`` as float32 arrays, after checking their shapes and values.

        Raises:
            ValueError: a wrong count, a wrong shape, or a value that is not finite.
        """
        expected = [a.shape for a in self.initial()]
        if len(params) != len(expected):
            raise ValueError(f"expected {len(expected)} parameter arrays, got {len(params)}")
        checked = []
        for i, (array, shape) in enumerate(zip(params, expected, strict=True)):
            array = np.asarray(array, dtype=np.float32)
            if array.shape != shape:
                raise ValueError(
                    f"parameter {i}: expected shape {list(shape)}, got {list(array.shape)}"
                )
            if not np.isfinite(array).all():
                raise ValueError(f"parameter {i}: holds values that are not finite")
            checked.append(array)
        return checked

    # -- numpy model --------------------------------------------------------------------

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, dtype=np.float32)
        if self.mean is not None:
            z = z - np.asarray(self.mean, dtype=np.float32)
        if self.scale is not None:
            z = z / np.asarray(self.scale, dtype=np.float32)
        return z

    def _forward(self, params: Params, x: np.ndarray) -> list[np.ndarray]:
        """The activations of every layer, input first, probabilities last."""
        layers = [self._standardise(x)]
        count = len(params) // 2
        for i in range(count):
            logits = layers[-1] @ params[2 * i] + params[2 * i + 1]
            layers.append(np.maximum(logits, 0) if i < count - 1 else _softmax(logits))
        return layers

    def predict_proba(self, params: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
        """Class probabilities, ``[rows, classes]``."""
        return self._forward(list(params), x)[-1]

    def evaluate(
        self, params: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray
    ) -> dict[str, float]:
        """``{"accuracy", "loss"}`` (mean cross-entropy) on labelled rows."""
        proba = self.predict_proba(params, x)
        y = np.asarray(y, dtype=np.int64)
        picked = proba[np.arange(len(y)), y]
        return {
            "accuracy": float((proba.argmax(axis=1) == y).mean()),
            "loss": float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()),
        }

    def train(
        self,
        params: Sequence[np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int = 1,
        learning_rate: float = 0.1,
        batch_size: int = 16,
        proximal_mu: float = 0.0,
        seed: int | None = None,
    ) -> Params:
        """Mini-batch SGD on cross-entropy, from ``params``; return the new parameters.

        ``proximal_mu`` > 0 adds FedProx's term ``mu/2 * ||w - w_start||²``, which
        keeps a device's parameters near the global model it started from.
        """
        start = self.check(params)
        current = [a.copy() for a in start]
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for begin in range(0, len(x), batch_size):
                rows = order[begin : begin + batch_size]
                grads = self._gradients(current, x[rows], y[rows])
                for i, grad in enumerate(grads):
                    if proximal_mu:
                        grad = grad + proximal_mu * (current[i] - start[i])
                    current[i] -= np.float32(learning_rate) * grad.astype(np.float32)
        return current

    def _gradients(self, params: Params, x: np.ndarray, y: np.ndarray) -> Params:
        layers = self._forward(params, x)
        delta = layers[-1].copy()
        delta[np.arange(len(y)), y] -= 1.0
        delta /= len(y)
        grads: Params = [np.empty(0)] * len(params)
        for i in reversed(range(len(params) // 2)):
            grads[2 * i] = layers[i].T @ delta
            grads[2 * i + 1] = delta.sum(axis=0)
            if i:
                delta = (delta @ params[2 * i].T) * (layers[i] > 0)
        return grads

    # -- ONNX ---------------------------------------------------------------------------

    def to_onnx(self, params: Sequence[np.ndarray], *, sample: np.ndarray) -> bytes:
        """The model as ONNX bytes, checked on ``sample`` rows against the numpy model.

        Raises:
            ValueError: the parameters do not fit this model.
            ConversionError: the ONNX model's answers differ from the numpy model's
                (labels on any row, or probabilities by more than 1e-4).
        """
        from onnx import TensorProto, helper, numpy_helper

        checked = self.check(params)
        nodes = []
        inits = []
        current = "float_input"
        for name, values, op in (("mean", self.mean, "Sub"), ("scale", self.scale, "Div")):
            if values is not None:
                inits.append(numpy_helper.from_array(np.asarray(values, np.float32), name))
                nodes.append(helper.make_node(op, [current, name], [f"{name}_out"]))
                current = f"{name}_out"
        count = len(checked) // 2
        for i in range(count):
            inits.append(numpy_helper.from_array(checked[2 * i], f"W{i}"))
            inits.append(numpy_helper.from_array(checked[2 * i + 1], f"b{i}"))
            nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"mm{i}"]))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]))
            current = f"z{i}"
            if i < count - 1:
                nodes.append(helper.make_node("Relu", [current], [f"h{i}"]))
                current = f"h{i}"
        nodes.append(helper.make_node("Softmax", [current], ["output_probability"], axis=1))
        nodes.append(
            helper.make_node("ArgMax", ["output_probability"], ["output_label"], axis=1, keepdims=0)
        )
        graph = helper.make_graph(
            nodes,
            "ligeiro-federated",
            [
                helper.make_tensor_value_info(
                    "float_input", TensorProto.FLOAT, [None, self.features]
                )
            ],
            [
                helper.make_tensor_value_info("output_label", TensorProto.INT64, [None]),
                helper.make_tensor_value_info(
                    "output_probability", TensorProto.FLOAT, [None, self.classes]
                ),
            ],
            inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", _OPSET)],
            producer_name="ligeiro.federated",
        )
        model.ir_version = _IR_VERSION
        data: bytes = model.SerializeToString()
        fidelity = self.fidelity(checked, data, sample)
        if not fidelity.passed:
            raise ConversionError(
                "the exported ONNX model disagrees with the numpy model:\n" + fidelity.table()
            )
        return data

    def fidelity(
        self, params: Sequence[np.ndarray], onnx_bytes: bytes, sample: np.ndarray
    ) -> Fidelity:
        """``ligeiro.convert.fidelity``'s comparison of the ONNX model with the numpy one."""
        import onnxruntime

        session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        x = np.asarray(sample, dtype=np.float32)
        label, proba = session.run(["output_label", "output_probability"], {"float_input": x})
        reference = self.predict_proba(params, x)
        return compare(
            {"output_label": reference.argmax(axis=1), "output_probability": reference},
            {"output_label": label, "output_probability": proba},
            tolerance=FIDELITY_TOLERANCE,
            labels=frozenset({"output_label"}),
        )

    def from_onnx(self, path: Path) -> Params:
        """The parameters of a model this class exported (a served version, a packaged
        model on a device), so that training starts from what is served.

        Raises:
            ModelLoadError: the file is not such a model, or its shapes differ.
        """
        import onnx
        from google.protobuf.message import DecodeError
        from onnx import numpy_helper

        try:
            graph = onnx.load(str(path)).graph
        except (OSError, ValueError, DecodeError) as exc:
            raise ModelLoadError(f"{path}: not an ONNX model: {exc}") from None
        found = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        names = [f"{kind}{i}" for i in range(len(self._sizes) - 1) for kind in ("W", "b")]
        missing = [n for n in names if n not in found]
        if missing:
            raise ModelLoadError(
                f"{path}: not a ligeiro.federated model (no initializer {missing[0]!r})"
            )
        try:
            return self.check([found[n] for n in names])
        except ValueError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
