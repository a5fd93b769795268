"""The on-disk format of one ``pagefile`` page: a 40-byte header, then the page bytes.

Header, little-endian::

    magic      4s   b"HCKV"
    version    u8   2
    algorithm  u8   1 = crc32 (zlib), 2 = xxh3-64 (xxhash)
    hdr_size   u16  40
    length     u64  payload bytes that follow the header
    checksum   u64  of the payload, by ``algorithm``
    key_check  u64  of the page key (the hash the engine asked for), by ``algorithm``
    ns_check   u64  of the pool namespace (``hc1.{model}.{format}.{shard}``), by ``algorithm``

A page is served only when the file is exactly ``40 + length`` bytes, ``length`` is the host
pool's page size, the namespace check matches this pool's namespace (else it is a page of
another model, dtype, layout or shard: a miss counted as ``format_mismatch``), the key check
matches the key asked for, and the checksum matches. Anything else (a truncated file, a
flipped bit, a file copied under the wrong name) is a miss. Version 1 files (32-byte header,
no namespace check) are never served.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Any

try:  # a declared dependency; the fallback keeps a broken install readable for crc32 files
    import xxhash

    _HAS_XXHASH = True
except ImportError:  # pragma: no cover - exercised only without the dependency
    _HAS_XXHASH = False

MAGIC = b"HCKV"
FORMAT_VERSION = 2
HEADER = struct.Struct("<4sBBHQQQQ")
HEADER_SIZE = HEADER.size  # 40
#: The three checks after the prefix: payload checksum, key check, namespace check.
CHECKS = struct.Struct("<QQQ")
ALGO_CRC32 = 1
ALGO_XXH3 = 2
ALGORITHMS = {"crc32": ALGO_CRC32, "xxh3": ALGO_XXH3}

Buffer = Any  # bytes-like: bytes, memoryview, numpy array


def algorithm_id(name: str) -> int:
    if name == "xxh3" and not _HAS_XXHASH:
        return ALGO_CRC32
    return ALGORITHMS[name]


def checksum(algorithm: int, pieces: Sequence[Buffer]) -> int:
    """Checksum of the concatenation of ``pieces`` (no copy is made to join them)."""
    if algorithm == ALGO_XXH3:
        if len(pieces) == 1:
            return int(xxhash.xxh3_64_intdigest(pieces[0]))
        h = xxhash.xxh3_64()
        for piece in pieces:
            h.update(piece)
        return int(h.intdigest())
    if algorithm == ALGO_CRC32:
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        return crc
    raise ValueError(f"unknown checksum algorithm {algorithm}")


#: Bytes of the header before the checksum fields: magic, version, algorithm, size, length.
PREFIX_SIZE = 16


def key_check(algorithm: int, key: str) -> int:
    if algorithm == ALGO_XXH3:
        return int(xxhash.xxh3_64_intdigest(key.encode()))
    return zlib.crc32(key.encode())


def header_prefix(algorithm: int, length: int) -> bytes:
    """The first ``PREFIX_SIZE`` header bytes of a sound page of ``length`` bytes."""
    return HEADER.pack(MAGIC, FORMAT_VERSION, algorithm, HEADER_SIZE, length, 0, 0, 0)[:PREFIX_SIZE]


def pack_header(algorithm: int, length: int, payload_checksum: int, key: str, namespace: str) -> bytes:
    return HEADER.pack(
        MAGIC, FORMAT_VERSION, algorithm, HEADER_SIZE, length, payload_checksum,
        key_check(algorithm, key), key_check(algorithm, namespace),
    )


#: ``check_header``'s answer for a sound page of another pool's namespace (not damage).
OTHER_NAMESPACE = "page of another pool format or shard"


def check_header(
    header: Buffer, key: str, namespace: str, expected_length: int | None
) -> tuple[int, int, int] | str:
    """``(algorithm, length, checksum)`` when the header is sound for ``key``, else why not.

    ``OTHER_NAMESPACE`` when it is a page written for another namespace.
    """
    magic, version, algorithm, hdr_size, length, payload_checksum, kcheck, nscheck = HEADER.unpack_from(header)
    if magic != MAGIC:
        return "bad magic"
    if version != FORMAT_VERSION or hdr_size != HEADER_SIZE:
        return f"unsupported format version {version}"
    if algorithm == ALGO_XXH3 and not _HAS_XXHASH:
        return "xxh3 checksum but xxhash is not installed"
    if algorithm not in (ALGO_CRC32, ALGO_XXH3):
        return f"unknown checksum algorithm {algorithm}"
    if nscheck != key_check(algorithm, namespace):
        return OTHER_NAMESPACE
    if expected_length is not None and length != expected_length:
        return f"page of {length} bytes, this pool's pages are {expected_length}"
    if kcheck != key_check(algorithm, key):
        return "file holds another key"
    return algorithm, length, payload_checksum


def verify_file(path: str) -> bool:
    """Whether the file at ``path`` is a whole, sound page file (any key): reads all of it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    if len(data) < HEADER_SIZE:
        return False
    magic, version, algorithm, hdr_size, length, payload_checksum, _, _ = HEADER.unpack_from(data)
    if magic != MAGIC or version != FORMAT_VERSION or hdr_size != HEADER_SIZE or len(data) != HEADER_SIZE + length:
        return False
    if algorithm not in (ALGO_CRC32, ALGO_XXH3) or (algorithm == ALGO_XXH3 and not _HAS_XXHASH):
        return False
    return bool(checksum(algorithm, [memoryview(data)[HEADER_SIZE:]]) == payload_checksum)
