"""HPACK request blocks within bounds: the size of the decoded list, leading table size
updates, and the cache of repeated blocks (``ligeiro.server._h2headers``)."""

from __future__ import annotations

import pytest
from hpack import Encoder

from ligeiro.server._h2headers import HeaderDecoder
from ligeiro.server._h2wire import COMPRESSION_ERROR, ConnectionFailure, literal

UPDATE = b"\x3f\xe1\x1f"  # dynamic table size 4096


def test_a_repeated_block_decodes_to_the_same_headers() -> None:
    decoder = HeaderDecoder(16 * 1024)
    block = literal(b":path", b"/x") + literal(b"te", b"trailers")
    first = decoder.decode(block)
    assert first.fields == {b":path": b"/x", b"te": b"trailers"}
    assert decoder.decode(block) is first  # kept


def test_the_cache_keeps_few_blocks_and_no_large_ones() -> None:
    decoder = HeaderDecoder(16 * 1024)
    for i in range(500):
        decoder.decode(literal(b"x-n", str(i).encode()))
    assert len(decoder.known) <= 64
    large = literal(b"x-large", b"v" * 2000)
    assert decoder.decode(large) is not decoder.decode(large)  # decoded each time


def test_two_table_size_updates_are_allowed_three_are_not() -> None:
    decoder = HeaderDecoder(16 * 1024)
    assert decoder.decode(UPDATE * 2 + literal(b"a", b"b")).fields == {b"a": b"b"}
    with pytest.raises(ConnectionFailure) as info:
        decoder.decode(UPDATE * 3 + literal(b"a", b"b"))
    assert info.value.code == COMPRESSION_ERROR


def test_a_block_that_decodes_past_the_limit_is_a_compression_error() -> None:
    block = Encoder().encode([(b"x-big", b"v" * 3000)] * 10)  # indexed once, then referenced
    assert len(block) < 4000
    with pytest.raises(ConnectionFailure) as info:
        HeaderDecoder(16 * 1024).decode(block)
    assert info.value.code == COMPRESSION_ERROR


def test_what_a_connection_made_of_a_block_comes_back_with_it() -> None:
    # HeaderBlock.route: gRPC keeps a call's route there (server/_grpc_routes.py).
    decoder = HeaderDecoder(16 * 1024)
    block = literal(b":path", b"/x")
    decoder.decode(block).route = "read"
    assert decoder.known[block].route == "read"
    assert decoder.decode(literal(b":path", b"/y")).route is None  # another block: unread
