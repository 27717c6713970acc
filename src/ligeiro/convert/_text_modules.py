"""The torch modules ``ligeiro.convert.text`` exports: a transformer with its head.

Imported only when exporting (it needs torch and transformers). ``SentenceEncoder``
reproduces sentence-transformers' ``Pooling`` and ``Normalize`` modules on a
transformers ``AutoModel``; ``TextClassifier`` puts a softmax and an argmax on an
``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConversionError

if TYPE_CHECKING:
    from ._text_folder import TextFolder

__all__ = ["SentenceEncoder", "TextClassifier", "text_module"]

_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_POOLING_NAMES = {"mean": "mean", "cls": "CLS", "max": "max", "mean_sqrt_len": "mean-sqrt-len"}


class SentenceEncoder(torch.nn.Module):
    """A transformer, then sentence-transformers' pooling and (optionally) Normalize."""

    def __init__(self, model: torch.nn.Module, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.normalize = normalize

    def describe(self) -> str:
        steps = [f"transformers {type(self.model).__name__}"]
        steps.append(f"{_POOLING_NAMES[self.pooling]} pooling")
        if self.normalize:
            steps.append("L2 normalisation")
        return f"torch ({' + '.join(steps)})"

    def forward(self, *tokens: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(_TOKEN_INPUTS, tokens, strict=False))
        hidden = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
        else:
            total = (hidden * mask).sum(dim=1)
            count = mask.sum(dim=1).clamp(min=1e-9)
            pooled = total / (count if self.pooling == "mean" else torch.sqrt(count))
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled


class TextClassifier(torch.nn.Module):
    """A sequence classifier answering the argmax label and the softmax probabilities."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def describe(self) -> str:
        return f"torch (transformers {type(self.model).__name__} + softmax)"

    def forward(self, *tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(**dict(zip(_TOKEN_INPUTS, tokens, strict=False))).logits
        probabilities = torch.softmax(logits, dim=-1)
        return probabilities.argmax(dim=-1), probabilities


def text_module(folder: TextFolder) -> tuple[SentenceEncoder | TextClassifier, list[str]]:
    """The module to export for ``folder``, in eval mode, and the token inputs it takes.

    Raises:
        ConversionError: transformers cannot load the folder.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    kind: Any = AutoModel if folder.task == "feature-extraction" else (
        AutoModelForSequenceClassification
    )
    try:
        # Eager attention: the traced graph is plain MatMul/Softmax, which ORT fuses.
        model = kind.from_pretrained(
            str(folder.transformer), attn_implementation="eager", local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ConversionError(f"{folder.transformer}: transformers cannot load it: {exc}") from None
    taken = inspect.signature(model.forward).parameters
    # The tokenizer gives all three; a model without token types (DistilBERT) takes two.
    inputs = [name for name in _TOKEN_INPUTS if name in taken]
    if inputs[:2] != ["input_ids", "attention_mask"]:
        raise ConversionError(
            f"{folder.transformer}: {type(model).__name__} does not take input_ids and "
            "attention_mask"
        )
    module = (
        SentenceEncoder(model, folder.pooling, folder.normalize)
        if folder.task == "feature-extraction"
        else TextClassifier(model)
    )
    module.eval()
    return module, inputs
