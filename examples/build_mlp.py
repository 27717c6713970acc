"""Build ``mlp``: a model heavy enough for batching to matter, into a ligeiro repository.

A scikit-learn ``MLPClassifier`` (two hidden layers of 2048) on the bundled digits
dataset (8x8 images, 64 features, 10 classes). One row costs about 4.3 M
multiply-adds, reading 17 MB of weights; a batch of 64 rows reads them once, which is
what dynamic batching buys. The model is converted with skl2onnx (no ZipMap) and written
only if ONNX Runtime agrees with scikit-learn on the held-out split (see build_iris.py).

Run: ``python examples/build_mlp.py --out examples/models``

Writes ``<out>/mlp/1/model.onnx``, ``<out>/mlp/config.toml`` (with ``[batching]``) and
``<out>/mlp/parity.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_iris import SEED, check_parity

logger = logging.getLogger("build_mlp")

HIDDEN = (2048, 2048)
CLASSES = 10

CONFIG = f"""\
# An MLP on sklearn's digits (examples/build_mlp.py): 64 pixel values in, a digit out.
labels = {json.dumps([str(d) for d in range(CLASSES)])}
label_output = "output_label"
probability_output = "output_probability"

# Requests that arrive while the model runs are concatenated and run as one batch;
# a request that finds the model idle runs at once.
[batching]
max_batch_size = 64
max_queue_size = 512
"""


def train(epochs: int) -> tuple[Pipeline, np.ndarray]:
    """Fit the MLP; return it and the held-out rows."""
    digits = load_digits()
    x = digits.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=SEED, stratify=digits.target
    )
    model = Pipeline(
        steps=[
            ("scale", StandardScaler()),
            ("mlp", MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=epochs, random_state=SEED)),
        ]
    )
    with warnings.catch_warnings():
        # A few epochs are enough for a serving benchmark's model; not a convergence study.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    logger.info("test accuracy %.4f", accuracy_score(y_test, model.predict(x_test)))
    return model, x_test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/models"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, x_test = train(args.epochs)
    features = x_test.shape[1]
    onnx_model = convert_sklearn(
        model,
        initial_types=[("float_input", FloatTensorType([None, features]))],
        options={id(model): {"zipmap": False}},
        final_types=[
            ("output_label", Int64TensorType([None])),
            ("output_probability", FloatTensorType([None, CLASSES])),
        ],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onnx_bytes = onnx_model.SerializeToString()
    report = check_parity(model, onnx_bytes, x_test, args.tolerance)

    folder = args.out / "mlp"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.onnx").write_bytes(onnx_bytes)
    (folder / "config.toml").write_text(CONFIG)
    (folder / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s (%.1f MB; parity %s)", folder, len(onnx_bytes) / 1e6, json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
