"""A Hugging Face / sentence-transformers folder read for ``ligeiro.convert.text``.

``read_text_folder`` says what the export must reproduce: where the transformer is, its
pooling and normalisation (``modules.json``, ``1_Pooling/config.json``), how many tokens
a text keeps (``sentence_bert_config.json``'s ``max_seq_length``, else the tokenizer's
limit) and a classifier's labels (``config.json``'s ``id2label``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

from ..errors import ConversionError

__all__ = ["TASKS", "TextFolder", "read_json", "read_text_folder"]

TASKS = ("feature-extraction", "text-classification")
_POOLING = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_ST_MODULES = "sentence_transformers.models."


@final
@dataclass(frozen=True, slots=True)
class TextFolder:
    """What a model folder says about itself.

    Attributes:
        path: the folder given.
        transformer: the folder holding the transformer (``modules.json``'s first module).
        task: ``"feature-extraction"`` or ``"text-classification"``.
        pooling: ``"mean"``, ``"cls"``, ``"max"`` or ``"mean_sqrt_len"`` (embeddings).
        normalize: L2-normalise the embeddings (``modules.json`` has ``Normalize``).
        max_length: tokens kept per text.
        dimensions: the transformer's hidden size (the embeddings' width).
        labels: class names by id (classification), from ``id2label``.
        notes: what was assumed, for the report.
    """

    path: Path
    transformer: Path
    task: str
    pooling: str
    normalize: bool
    max_length: int
    dimensions: int
    labels: list[str] | None
    notes: list[str]


def read_json(path: Path) -> Any:
    """A JSON file of the folder; unreadable is a ``ConversionError`` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path}: cannot read it as JSON: {exc}") from None


def read_text_folder(source: str | Path, task: str, *, max_length: int | None = None) -> TextFolder:
    """Read a Hugging Face / sentence-transformers folder's layout for ``task``.

    Raises:
        ConversionError: not a folder with ``config.json``, an unknown task, a
            ``modules.json`` module or pooling mode the export does not reproduce, or a
            classification folder without labels.
    """
    path = Path(source)
    if task not in TASKS:
        raise ConversionError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if not path.is_dir():
        raise ConversionError(f"{path}: not a folder (a Hugging Face model folder is one)")
    notes: list[str] = []
    transformer, pooling, normalize, seq_length = path, "mean", False, None
    modules_file = path / "modules.json"
    # A sentence-transformers folder's modules say how to pool; a classifier has its head.
    if task == "feature-extraction" and modules_file.is_file():
        modules = read_json(modules_file)
        for module in modules:
            kind = str(module.get("type", ""))
            where = path / str(module.get("path", ""))
            if kind == _ST_MODULES + "Transformer":
                transformer = where
                config = where / "sentence_bert_config.json"
                if config.is_file():
                    seq_length = read_json(config).get("max_seq_length")
            elif kind == _ST_MODULES + "Pooling":
                pooling = _pooling(where / "config.json")
            elif kind == _ST_MODULES + "Normalize":
                normalize = True
            else:
                raise ConversionError(
                    f"{modules_file}: module {kind!r} is not supported; the export "
                    "reproduces Transformer, Pooling and Normalize"
                )
        if seq_length is None and (path / "sentence_bert_config.json").is_file():
            seq_length = read_json(path / "sentence_bert_config.json").get("max_seq_length")
    elif task == "feature-extraction":
        notes.append("no modules.json: mean pooling over attention_mask, not normalised")
    if not (transformer / "config.json").is_file():
        raise ConversionError(f"{transformer}: no config.json; not a Hugging Face model folder")
    config = read_json(transformer / "config.json")
    labels = None
    if task == "text-classification":
        id2label = config.get("id2label")
        if not id2label:
            raise ConversionError(
                f"{transformer / 'config.json'}: no id2label; a text-classification folder "
                "names its classes there"
            )
        labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
        if config.get("problem_type") == "multi_label_classification":
            raise ConversionError(
                f"{transformer}: a multi-label classifier (sigmoid per class) is not supported; "
                "the pipeline answers one label per text"
            )
    length = max_length or seq_length or _tokenizer_limit(transformer, config)
    dimensions = int(config.get("hidden_size", 0))
    return TextFolder(
        path, transformer, task, pooling, normalize, int(length), dimensions, labels, notes
    )


def _pooling(config_file: Path) -> str:
    config = read_json(config_file)
    modes = [mode for key, mode in _POOLING.items() if config.get(key)]
    others = [
        k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in _POOLING
    ]
    if others or len(modes) != 1:
        raise ConversionError(
            f"{config_file}: pooling {', '.join(modes + others) or 'none'} is not supported; "
            "expected exactly one of mean, cls, max or mean_sqrt_len"
        )
    return modes[0]


def _tokenizer_limit(folder: Path, config: dict[str, Any]) -> int:
    positions = int(config.get("max_position_embeddings", 512))
    settings = folder / "tokenizer_config.json"
    declared = read_json(settings).get("model_max_length") if settings.is_file() else None
    if isinstance(declared, int) and 0 < declared <= positions:
        return declared
    return positions
