"""Encoded pieces that answers repeat, kept: a model's name and version, an output's entry.

Both codecs write their answers from pieces (``codec.encode_infer_response`` its JSON,
``grpc_codec.encode_infer_response`` its protobuf): the parts that depend only on the
model and on each output's name, datatype and shape are made once and kept. Shapes can
vary without end (a client picks the rows), so a cache holds at most ``limit`` pieces
and starts again past it.
"""

from __future__ import annotations

from typing import TypeVar, final

__all__ = ["Pieces"]

_K = TypeVar("_K")
_V = TypeVar("_V")


@final
class Pieces(dict[_K, _V]):
    """Encoded pieces by what they encode, at most ``limit`` of them (``get`` reads)."""

    __slots__ = ("limit",)

    def __init__(self, limit: int = 1024) -> None:
        super().__init__()
        self.limit = limit

    def keep(self, key: _K, piece: _V) -> _V:
        """Keep ``piece`` for ``key`` (emptying the cache first when it is full); return it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = piece
        return piece
