"""On-disk formats of the segment scheme: the page record in a segment, the journal record.

A segment file is a run of page records, each a 64-byte header then the page bytes::

    magic       4s  b"HCS1"
    version     u8  1
    algorithm   u8  2 = xxh3-64
    reserved    u16
    length      u64 page bytes after the header
    key_hi      u64 the xxh3-128 of the page's storage key (``page_key(hash)``), high half
    key_lo      u64 low half
    checksum    u64 xxh3-64 of the page bytes
    segment     u64 the id of the segment the record was written to
    offset      u64 the record's offset in that segment
    header_chk  u64 xxh3-64 of the 56 bytes before it

The header names its key, segment and offset, so a record read from the wrong place (a stale
index, a copied file) fails its check and is a miss.

The journal (``index.log`` of a namespace) is a run of 48-byte records, appended under an
exclusive ``flock``; each carries its own check, so a record torn by a killed writer is skipped::

    kind    u8   0 = magic (first record), 1 = put, 2 = drop segment, 3 = delete key, 4 = clear
    pad     3x
    length  u32  page bytes (put)
    segment u64  segment id (put, drop; magic: the format's magic number)
    offset  u64  record offset in the segment (put)
    key_hi  u64  key hash (put, delete)
    key_lo  u64
    check   u64  xxh3-64 of the 40 bytes before it
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

import xxhash

RECORD_MAGIC = b"HCS1"
FORMAT_VERSION = 1
ALGO_XXH3 = 2
HEADER = struct.Struct("<4sBBHQQQQQQQ")
HEADER_SIZE = HEADER.size  # 64
_HEADER_BODY = struct.Struct("<4sBBHQQQQQQ")  # everything but the header check

JOURNAL = struct.Struct("<BxxxIQQQQQ")
JOURNAL_SIZE = JOURNAL.size  # 48
_JOURNAL_BODY = struct.Struct("<BxxxIQQQQ")
JOURNAL_MAGIC = 0x31474F4C53434348  # b"HCSLOG1" little-endian, plus a version byte
KIND_MAGIC, KIND_PUT, KIND_DROP, KIND_DELETE, KIND_CLEAR = 0, 1, 2, 3, 4

_MASK64 = (1 << 64) - 1
_xxh3_64 = xxhash.xxh3_64_intdigest
_xxh3_128 = xxhash.xxh3_128_intdigest

Buffer = Any  # bytes-like: bytes, memoryview, numpy array


def key_hash(storage_key: str) -> int:
    """The 128-bit identity of a page's storage key."""
    return int(_xxh3_128(storage_key.encode()))


def page_checksum(pieces: Sequence[Buffer]) -> int:
    """xxh3-64 of the concatenation of ``pieces`` (no copy is made to join them)."""
    if len(pieces) == 1:
        return int(_xxh3_64(pieces[0]))
    h = xxhash.xxh3_64()
    for piece in pieces:
        h.update(piece)
    return int(h.intdigest())


def pack_header(length: int, key: int, checksum: int, segment: int, offset: int) -> bytes:
    body = _HEADER_BODY.pack(
        RECORD_MAGIC, FORMAT_VERSION, ALGO_XXH3, 0, length, key >> 64, key & _MASK64, checksum, segment, offset
    )
    return body + _xxh3_64(body).to_bytes(8, "little")


def journal_record(kind: int, length: int = 0, segment: int = 0, offset: int = 0, key: int = 0) -> bytes:
    body = _JOURNAL_BODY.pack(kind, length, segment, offset, key >> 64, key & _MASK64)
    return body + _xxh3_64(body).to_bytes(8, "little")


def magic_record() -> bytes:
    return journal_record(KIND_MAGIC, FORMAT_VERSION, JOURNAL_MAGIC)


def parse_journal(data: Buffer) -> Iterator[tuple[int, int, int, int, int] | None]:
    """``(kind, length, segment, offset, key)`` per whole record of ``data``; None for a torn one."""
    view = memoryview(data)
    whole = len(view) - len(view) % JOURNAL_SIZE
    pos = 0
    for kind, length, segment, offset, hi, lo, check in JOURNAL.iter_unpack(view[:whole]):
        if check != _xxh3_64(view[pos : pos + JOURNAL_SIZE - 8]):
            yield None
        else:
            yield kind, length, segment, offset, hi << 64 | lo
        pos += JOURNAL_SIZE
