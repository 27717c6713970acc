"""Models served with one V2 row: where each comes from, its row, and a right answer.

A ``ModelCase`` is what ``bench_batching`` loads (``--model mlp|iris|wide``) and what
``bench_overload`` overloads (mlp): the repository to serve (an example, built when
missing, or a generated one in a temporary folder), the row sent as a ``[1, N]`` FP32
tensor, the check its answer must pass, and the ``--batch`` value of each batching
target.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from ._harness import MODELS, ROOT, ensure_example, expect_answer
from ._models import WIDE_WIDTHS, build_mlp

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._harness import HttpRequest

__all__ = ["CASES", "ModelCase", "verify"]

# load_digits().data[0], a handwritten 0 (8x8 pixels, 0-16): the model answers class 0.
DIGIT_ZERO: Final = (
    0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0,
    0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0,
    0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0,
)  # fmt: skip
SETOSA: Final = (5.1, 3.5, 1.4, 0.2)


WIDE_CONFIG: Final = "[batching]\nmax_batch_size = 64\nmax_queue_size = 512\n"


def _outputs(answer: object) -> list[dict[str, object]]:
    """The ``outputs`` of a V2 answer, as far as they are objects."""
    outputs = answer.get("outputs", []) if isinstance(answer, dict) else []
    return [o for o in outputs if isinstance(o, dict)] if isinstance(outputs, list) else []


def label_is(expected: int) -> Callable[[object], bool]:
    """An answer check: ``output_label`` is ``[expected]``."""

    def check(answer: object) -> bool:
        labels = [o.get("data") for o in _outputs(answer) if o.get("name") == "output_label"]
        return labels == [[expected]]

    return check


def finite_y(width: int) -> Callable[[object], bool]:
    """An answer check: one output ``y`` of shape ``[1, width]`` holding finite numbers."""

    def check(answer: object) -> bool:
        ys = [o for o in _outputs(answer) if o.get("name") == "y"]
        if len(ys) != 1 or ys[0].get("shape") != [1, width]:
            return False
        data = ys[0].get("data")
        return (
            isinstance(data, list)
            and len(data) == width
            and all(isinstance(v, int | float) and math.isfinite(v) for v in data)
        )

    return check


def example_repository(name: str, build_script: Path) -> Callable[[contextlib.ExitStack], Path]:
    """A repository provider: ``examples/models``, building ``name`` when it is missing."""

    def prepare(_stack: contextlib.ExitStack) -> Path:
        ensure_example(name, build_script)
        return MODELS

    return prepare


def generated_repository(
    name: str, widths: Sequence[int], config: str
) -> Callable[[contextlib.ExitStack], Path]:
    """A repository provider: a temporary one (removed when the stack closes) holding
    ``name/1/model.onnx`` from ``build_mlp(widths)`` and ``name/config.toml``."""

    def prepare(stack: contextlib.ExitStack) -> Path:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ligeiro-batching-")))
        weights = build_mlp(folder / name / "1" / "model.onnx", widths, graph_name=name)
        (folder / name / "config.toml").write_text(config)
        print(
            f"generated the {name} model, {weights / 1e6:.1f} MB of weights, in {folder}",
            flush=True,
        )
        return folder

    return prepare


@dataclass(frozen=True)
class ModelCase:
    """A model: where it comes from, the row that loads it, how its answer is checked,
    and the ``--batch`` value of each target.

    ``None`` means no ``--batch`` option: the model's own ``config.toml`` decides.
    ``prepare`` returns the repository to serve (building what is missing); a temporary
    one lives until the stack it is given closes. ``expects`` describes ``check``.
    """

    name: str
    row: tuple[float, ...]
    batch: Mapping[str, str | None]
    prepare: Callable[[contextlib.ExitStack], Path]
    repository: str  # the repository as the report names it
    check: Callable[[object], bool]
    expects: str
    input_name: str = "float_input"
    packages: tuple[str, ...] = ()  # versions worth recording beyond PACKAGES

    def payload(self) -> dict[str, object]:
        """The V2 JSON request: one row as a ``[1, features]`` FP32 tensor."""
        tensor = {
            "name": self.input_name,
            "shape": [1, len(self.row)],
            "datatype": "FP32",
            "data": list(self.row),
        }
        return {"inputs": [tensor]}


CASES: Final = {
    "mlp": ModelCase(
        "mlp",
        DIGIT_ZERO,
        # config.toml: max_batch_size = 64, max_queue_size = 512.
        batch={
            "batched": None,
            "batched-thread": "max_batch_size=64,max_queue_size=512,run_on=thread",
            "unbatched": "max_batch_size=0",
            "queued": "max_batch_size=1,run_on=thread",
        },
        prepare=example_repository("mlp", ROOT / "examples" / "build_mlp.py"),
        repository="examples/models",
        check=label_is(0),
        expects="output_label [0]",
    ),
    "iris": ModelCase(
        "iris",
        SETOSA,
        # iris has no [batching]: unbatched is its default.
        batch={
            "batched": "max_batch_size=64",
            "batched-thread": "max_batch_size=64,run_on=thread",
            "unbatched": None,
            "queued": "max_batch_size=1,run_on=thread",
        },
        prepare=example_repository("iris", ROOT / "examples" / "build_iris.py"),
        repository="examples/models",
        check=label_is(0),
        expects="output_label [0]",
    ),
    "wide": ModelCase(
        "wide",
        tuple(np.linspace(-1, 1, WIDE_WIDTHS[0]).round(4).tolist()),
        # WIDE_CONFIG: max_batch_size = 64, max_queue_size = 512, as mlp's config.toml.
        batch={
            "batched": None,
            "batched-thread": "max_batch_size=64,max_queue_size=512,run_on=thread",
            "unbatched": "max_batch_size=0",
            "queued": "max_batch_size=1,run_on=thread",
        },
        prepare=generated_repository("wide", WIDE_WIDTHS, WIDE_CONFIG),
        repository="<temporary repository>",
        check=finite_y(WIDE_WIDTHS[-1]),
        expects=f"y of shape [1, {WIDE_WIDTHS[-1]}], all finite",
        input_name="x",
        packages=("onnx",),
    ),
}


def verify(case: ModelCase, request: HttpRequest) -> None:
    """Send the row once; require a 200 whose answer passes the case's check.

    Raises:
        BenchmarkError: no answer, a non-200 status, or an answer the check rejects.
    """
    expect_answer(request, case.check, expected=f"with {case.expects}")
