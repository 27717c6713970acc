"""Pipelines: a model made of other models of the repository, run one after another.

``config.toml`` says ``platform = "pipeline"`` and lists ``[[steps]]`` (``model``, and
optionally ``version``). Tensors flow by name: a step takes its inputs from the
pipeline's inputs or from an earlier step's outputs. The pipeline's inputs are the
tensors some step takes that no earlier step gives; its outputs are the ``[[outputs]]``
its config declares, or else the last step's. The whole chain is one run, so a
pipeline with ``[batching]`` batches every step at once (a tokenizer sees the batch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from ..errors import InferenceError, InvalidInputError, ModelLoadError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np

    from .base import Runtime, TensorSpec

__all__ = ["PipelineRuntime", "Step"]


@final
class Step:
    """A step: its name (for messages), its runtime and its signature."""

    __slots__ = ("inputs", "name", "outputs", "runtime")

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        inputs: Mapping[str, TensorSpec],
        outputs: Mapping[str, TensorSpec],
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)


def _compatible(given: TensorSpec, taken: TensorSpec) -> bool:
    if given.dtype != taken.dtype and not (given.dtype.kind == taken.dtype.kind == "O"):
        return False
    if len(given.shape) != len(taken.shape):
        return False
    return all(a == b or -1 in (a, b) for a, b in zip(given.shape, taken.shape, strict=True))


def _describe(spec: TensorSpec) -> str:
    return f"{spec.dtype.name} {list(spec.shape)}"


@final
class PipelineRuntime:
    """Runs its steps in order on one batch, passing tensors by name.

    Args:
        name: the pipeline's model name, for messages.
        where: what to name in load errors (the pipeline's config file).
        steps: the loaded step models, in order.
        declared: the pipeline's declared outputs, or None for the last step's.

    Raises:
        ModelLoadError: a step takes a tensor an earlier step gives with another dtype
            or shape, or a declared output is given by no step.
    """

    def __init__(
        self, name: str, where: str, steps: Sequence[Step], declared: Sequence[TensorSpec] | None
    ) -> None:
        self._name = name
        given: dict[str, tuple[str, TensorSpec]] = {}
        inputs: dict[str, TensorSpec] = {}
        text: set[str] = set()
        for step in steps:
            for spec in step.inputs.values():
                source = given.get(spec.name)
                if source is None:
                    inputs.setdefault(spec.name, spec)
                    if spec.name in step.runtime.text_inputs:
                        text.add(spec.name)
                elif not _compatible(source[1], spec):
                    raise ModelLoadError(
                        f"{where}: step {step.name!r} takes {spec.name!r} as "
                        f"{_describe(spec)}, but step {source[0]!r} gives "
                        f"{_describe(source[1])}"
                    )
            for name, spec in step.outputs.items():
                given[name] = (step.name, spec)
        self.inputs = tuple(inputs.values())
        # The pipeline's inputs that a step reads as text (a Python step that takes the
        # same input gets it back as bytes: PythonRuntime encodes str).
        self.text_inputs = frozenset(text)
        if declared is None:
            self.outputs = tuple(steps[-1].outputs.values())
        else:
            for spec in declared:
                source = given.get(spec.name)
                if source is None:
                    raise ModelLoadError(
                        f"{where}: output {spec.name!r} is given by no step; "
                        f"the steps give {', '.join(given)}"
                    )
                if not _compatible(source[1], spec):
                    raise ModelLoadError(
                        f"{where}: output {spec.name!r} is declared {_describe(spec)}, "
                        f"but step {source[0]!r} gives {_describe(source[1])}"
                    )
            self.outputs = tuple(declared)
        # Per step, which outputs to ask for: those a later step takes or the caller
        # may want (the pipeline's outputs), so a step computes nothing thrown away.
        wanted = {spec.name for spec in self.outputs}
        self._plan: list[tuple[Step, tuple[str, ...]]] = []
        for step in reversed(steps):
            names = tuple(n for n in step.outputs if n in wanted)
            self._plan.append((step, names))
            wanted.update(step.inputs)
        self._plan.reverse()

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Run the steps; an error names the pipeline and the step it came from.

        Raises:
            InvalidInputError: a step refused its input.
            InferenceError: a step failed.
        """
        tensors = dict(inputs)
        for i, (step, names) in enumerate(self._plan):
            if not names:
                continue
            feeds = {name: tensors[name] for name in step.inputs}
            try:
                arrays = step.runtime.run(feeds, names)
            except (InvalidInputError, InferenceError) as exc:
                raise type(exc)(f"pipeline {self._name!r} step {i} ({step.name!r}): {exc}") from exc
            tensors.update(zip(names, arrays, strict=True))
        return [tensors[name] for name in outputs]

    def close(self) -> None:
        """Nothing: the steps are models of the repository, which unloads them."""
