"""A text tokenizer: UTF-8 text in, transformer token tensors out (a ligeiro Python model).

``ligeiro.convert.text`` (``ligeiro convert --task``, and examples/build_text.py through
it) copies this file to ``<repository>/<name>-tokenizer/1/model.py`` beside the model
folder's ``tokenizer.json`` (a Hugging Face ``tokenizers`` file, such as
all-MiniLM-L6-v2's WordPiece tokenizer).

A shipped ``tokenizer.json`` may pad and truncate every text to a fixed length (128
tokens for all-MiniLM-L6-v2). Here a batch is padded to its own longest sequence (a
short sentence costs a short run of the encoder) with the file's pad token, and
truncated at ``max_length`` tokens, as sentence-transformers does.

Parameters (``[parameters]`` in ``config.toml``):
    max_length: tokens kept per text, ``[CLS]`` and ``[SEP]`` included (default 256).
    max_chars: the longest text accepted, in characters (default 10000).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import numpy as np
from tokenizers import Tokenizer

from ligeiro import InvalidInputError

if TYPE_CHECKING:
    from pathlib import Path

MAX_LENGTH = 256
MAX_CHARS = 10_000
INPUT = "text"


def _parameter(parameters: dict[str, object], name: str, default: int) -> int:
    value = parameters.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"parameter {name!r} must be a positive integer, got {value!r}")
    return value


@final
class Model:
    """Tokenize a batch of texts for a transformer encoder."""

    def __init__(self, folder: Path, parameters: dict[str, object]) -> None:
        self.max_length = _parameter(parameters, "max_length", MAX_LENGTH)
        self.max_chars = _parameter(parameters, "max_chars", MAX_CHARS)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        shipped = tokenizer.padding or {}
        tokenizer.no_padding()
        tokenizer.no_truncation()
        tokenizer.enable_truncation(max_length=self.max_length)
        # No ``length``: pad to the longest sequence of each batch.
        tokenizer.enable_padding(
            pad_id=int(shipped.get("pad_id", 0)),
            pad_type_id=int(shipped.get("pad_type_id", 0)),
            pad_token=str(shipped.get("pad_token", "[PAD]")),
        )
        self.tokenizer = tokenizer

    def _texts(self, column: np.ndarray) -> list[str]:
        if column.ndim == 2 and column.shape[1] == 1:
            column = column[:, 0]
        if column.ndim != 1:
            raise InvalidInputError(
                f"input {INPUT!r}: expected shape [-1] (one text per row), got {list(column.shape)}"
            )
        texts = []
        for row, value in enumerate(column.tolist()):
            if isinstance(value, bytes):
                try:
                    text = value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InvalidInputError(
                        f"input {INPUT!r} row {row}: not valid UTF-8 "
                        f"({exc.reason} at byte {exc.start})"
                    ) from None
            elif isinstance(value, str):
                text = value
            else:
                raise InvalidInputError(
                    f"input {INPUT!r} row {row}: expected a string, got {type(value).__name__}"
                )
            if not text:
                raise InvalidInputError(
                    f"input {INPUT!r} row {row}: empty string; expected at least one character"
                )
            if len(text) > self.max_chars:
                raise InvalidInputError(
                    f"input {INPUT!r} row {row}: {len(text)} characters, more than the limit "
                    f"of {self.max_chars} (parameter max_chars)"
                )
            texts.append(text)
        if not texts:
            raise InvalidInputError(f"input {INPUT!r}: no text; expected at least one row")
        return texts

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Token ids, attention mask and token type ids, each ``[N, longest]`` int64."""
        texts = self._texts(inputs[INPUT])
        encodings = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
