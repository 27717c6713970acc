"""Request header blocks (HPACK, RFC 7541) to headers, within bounds a peer cannot move.

``hpack`` decodes; this holds each block to what a server can afford: the decoded list
to ``max_header_list_bytes`` (an HPACK bomb: a small block that expands), at most two
dynamic table size updates at the block's start (frames full of them decode slowly and
change nothing, §4.2 needs no more), and a cache of the small blocks a client repeats,
call after call, that keeps neither large blocks nor more than a few. The compressed
block's own size is checked as its frames arrive (``_h2connection.py``).
"""

from __future__ import annotations

from typing import Any, final

from hpack import Decoder, HPACKError

from ._h2wire import COMPRESSION_ERROR, ConnectionFailure

__all__ = ["HeaderBlock", "HeaderDecoder"]

_CACHED_BLOCKS = 64  # per connection
_CACHED_BLOCK_BYTES = 1024  # a client's usual indexed block is tens of bytes
_TABLE_SIZE_UPDATES = 2  # §4.2: the smallest size reached, then the final one


@final
class HeaderBlock:
    """A decoded header block: the headers as sent, the same by name, and what the
    connection made of them (``route``: its own to set, None until it does). A block the
    decoder keeps comes back as the same object, its ``route`` with it."""

    __slots__ = ("fields", "headers", "route")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.fields = dict(headers)
        self.route: Any = None


class HeaderDecoder:
    """One connection's HPACK decoder, with the limits and the cache.

    Args:
        max_header_list_bytes: the decoded list's size, counted as §6.5.2 counts it
            (each header's name and value plus 32); over it is COMPRESSION_ERROR.
    """

    __slots__ = ("_decoder", "known")

    def __init__(self, max_header_list_bytes: int) -> None:
        self._decoder = Decoder(max_header_list_size=max_header_list_bytes)
        # Blocks that leave the dynamic table as it was, and their headers: a caller may
        # look a block up here before calling decode (and set only its ``route``).
        self.known: dict[bytes, HeaderBlock] = {}

    def decode(self, block: bytes) -> HeaderBlock:
        """The headers of a complete block; every block must pass, in order.

        Raises:
            ConnectionFailure: COMPRESSION_ERROR: a block HPACK cannot decode, one that
                decodes past the limit, or one that opens with too many table updates.
        """
        # A block that leaves the dynamic table as it was means the same headers every
        # time it comes back: clients send the same indexed block call after call.
        cached = self.known.get(block)
        if cached is not None:
            return cached
        if block and block[0] & 0xE0 == 0x20:
            _check_table_size_updates(block)
        table = self._decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        try:
            headers = [
                (bytes(name), bytes(value)) for name, value in self._decoder.decode(block, raw=True)
            ]
        except HPACKError as exc:
            raise ConnectionFailure(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        decoded = HeaderBlock(headers)
        after = (len(entries), entries[0] if entries else None, table.maxsize)
        if before[0] == after[0] and before[1] is after[1] and before[2] == after[2]:
            if len(block) <= _CACHED_BLOCK_BYTES:
                if len(self.known) >= _CACHED_BLOCKS:
                    self.known.clear()
                self.known[block] = decoded
        else:
            self.known.clear()
        return decoded


def _check_table_size_updates(block: bytes) -> None:
    """Refuse a block that opens with more table size updates than §4.2 has use for."""
    position, size, count = 0, len(block), 0
    while position < size and block[position] & 0xE0 == 0x20:
        count += 1
        if count > _TABLE_SIZE_UPDATES:
            raise ConnectionFailure(
                COMPRESSION_ERROR,
                f"a header block opening with more than {_TABLE_SIZE_UPDATES} table size updates",
            )
        if block[position] & 0x1F == 0x1F:  # the size goes on in 7-bit groups
            position += 1
            while position < size and block[position] & 0x80:
                position += 1
        position += 1
