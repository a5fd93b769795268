"""One batch's reads and writes: which records to move, in which runs, and the checks.

Reads: the index gives each key's record; records of one segment that lie back to back (pages
written in one batch do) are read by one ``preadv`` per ``chunk_bytes``, then each page's
header is checked (key, segment, offset, length) and, unless this process already checked it
(``verify: first``), its checksum. Writes: per chunk, each page's checksum and header, then one
``pwritev`` of headers and pages (with helper threads, the checksums of the next chunks are
computed while the calling thread writes); a chunk of one big page nobody checksummed yet is
written page first, checksummed from the CPU cache, then its header.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from xxhash import xxh3_64_intdigest

from hicache_file.fileio import preadv_all, pwritev_all
from hicache_file.segment.format import (
    ALGO_XXH3,
    FORMAT_VERSION,
    HEADER,
    HEADER_SIZE,
    RECORD_MAGIC,
    pack_header,
    page_checksum,
)
from hicache_file.segment.index import CHECKED, Segment, SegmentIndex

log = logging.getLogger(__name__)

_NOWAIT = getattr(os, "RWF_NOWAIT", 0)

Pieces = list[memoryview]


class ReadItem:
    """One page to read: where its record is and where its bytes go."""

    __slots__ = ("checked", "i", "key", "length", "offset", "pieces", "seg")

    def __init__(self, i: int, key: int, seg: Segment, length: int, offset: int, checked: bool, pieces: Pieces) -> None:
        self.i = i
        self.key = key
        self.seg = seg
        self.length = length
        self.offset = offset
        self.checked = checked
        self.pieces = pieces


def plan_reads(
    index: SegmentIndex, hashes: list[int], dests: list[Pieces | None], want: int | None,
) -> tuple[list[ReadItem], int, int]:
    """``(items in file order, misses, wrong sizes)`` for one batch (namespace lock held).

    ``want``: the length every page must have (a host pool's page), or None to take each
    destination's size as the length it must have.
    """
    entries, by_slot = index.entries, index.by_slot
    items: list[ReadItem] = []
    misses = wrong = 0
    for i, key in enumerate(hashes):
        loc = entries.get(key)
        pieces = dests[i]
        seg = by_slot.get(loc >> 96) if loc is not None else None
        if seg is None or pieces is None or loc is None:
            misses += 1
            continue
        length = (loc >> 48) & 0xFFFF_FFFF_FFFF
        need = want if want is not None else sum(len(p) for p in pieces)
        if length != need:
            wrong += 1
            continue
        items.append(ReadItem(i, key, seg, length, loc & (CHECKED - 1), bool(loc & CHECKED), pieces))
    if len(items) > 1:
        items.sort(key=lambda it: (it.seg.slot, it.offset))
    return items, misses, wrong


def read_chunks(items: list[ReadItem], chunk_bytes: int, run_bytes: int, verify_all: bool) -> list[list[ReadItem]]:
    """Runs of back-to-back records of one segment, one ``preadv`` each (one record at least).

    A run with a page whose checksum is to be checked is at most ``chunk_bytes``, so the check
    finds its bytes still in the CPU cache; a run of pages already checked (``verify: first``)
    may reach ``run_bytes``: fewer system calls, and bigger reads for the disk when cold.
    """
    chunks: list[list[ReadItem]] = []
    cur: list[ReadItem] = []
    size = 0
    end = -1
    limit = run_bytes
    seg: Segment | None = None
    for it in items:
        rec = HEADER_SIZE + it.length
        need = chunk_bytes if verify_all or not it.checked else run_bytes
        if cur and (it.seg is not seg or it.offset != end or size + rec > min(limit, need)):
            chunks.append(cur)
            cur, size, limit = [], 0, run_bytes
        cur.append(it)
        seg, size, end, limit = it.seg, size + rec, it.offset + rec, min(limit, need)
    if cur:
        chunks.append(cur)
    return chunks


def in_page_cache(chunk: list[ReadItem]) -> bool:
    """Whether the run's first bytes are in the page cache: one ``preadv`` of its first header
    with ``RWF_NOWAIT``, which fails rather than wait for the disk (having started the kernel's
    readahead there, which the run's read then uses). True where it cannot tell."""
    if not _NOWAIT:
        return True
    try:
        return os.preadv(chunk[0].seg.fd, [bytearray(HEADER_SIZE)], chunk[0].offset, _NOWAIT) > 0
    except BlockingIOError:
        return False
    except OSError:
        return True


def read_chunk(chunk: list[ReadItem], verify_all: bool) -> list[ReadItem]:
    """One ``preadv`` of a run of records, then each page's checks; returns the bad items
    (the others now hold their pages). The segment's descriptor is held by the caller."""
    n = len(chunk)
    headers = bytearray(HEADER_SIZE * n)
    hview = memoryview(headers)
    bufs: list[Any] = []
    total = 0
    for j, it in enumerate(chunk):
        bufs.append(hview[j * HEADER_SIZE : (j + 1) * HEADER_SIZE])
        bufs.extend(it.pieces)
        total += HEADER_SIZE + it.length
    seg = chunk[0].seg
    start = chunk[0].offset
    try:
        got = preadv_all(seg.fd, bufs, start, total)
    except OSError as exc:
        log.warning("file backend (segment): cannot read %s: %s", seg.name, exc)
        return list(chunk)
    bad: list[ReadItem] = []
    seg_id = seg.id
    # One unpack pass over the run's headers (layout: format.py); every field must match the index.
    for j, (it, fields) in enumerate(zip(chunk, HEADER.iter_unpack(headers))):
        magic, version, algo, _, length, hi, lo, checksum, rec_seg, rec_off, hcheck = fields
        why = ""
        if it.offset - start + HEADER_SIZE + it.length > got:
            why = "record is cut short"
        elif magic != RECORD_MAGIC or version != FORMAT_VERSION or algo != ALGO_XXH3:
            why = "not a page record of this format"
        elif rec_seg != seg_id or rec_off != it.offset or length != it.length or (hi << 64 | lo) != it.key:
            why = "record is not the one the index names"
        elif hcheck != xxh3_64_intdigest(hview[j * HEADER_SIZE : j * HEADER_SIZE + HEADER_SIZE - 8]):
            why = "header checksum mismatch"
        elif (verify_all or not it.checked) and page_checksum(it.pieces) != checksum:
            why = "checksum mismatch"
        if why:
            log.warning("file backend (segment): page at %s+%d is not served: %s", seg.name, it.offset, why)
            bad.append(it)
    return bad


WriteItem = tuple[int, int, Pieces]  # (result index, key hash, source pieces)


def checksums(items: list[WriteItem]) -> list[int]:
    """Each page's checksum (xxhash runs without the GIL: other threads go on meanwhile)."""
    return [page_checksum(pieces) for _, _, pieces in items]


def write_chunk(
    seg: Segment, offset: int, items: list[WriteItem], length: int, sums: list[int] | None = None,
    mid_write: Callable[[], None] | None = None,
) -> bool:
    """Write records for ``items`` back to back at ``offset`` with one ``pwritev``; True when all landed.

    ``sums``: the pages' checksums when already computed (``checksums``), else computed here.
    ``mid_write`` (a test hook) is called after the first half of the buffers was written.
    """
    if sums is None and len(items) == 1 and mid_write is None:
        return _write_then_checksum(seg, offset, items[0], length)
    if sums is None:
        sums = checksums(items)
    bufs: list[Any] = []
    record = HEADER_SIZE + length
    for k, ((_, key, pieces), checksum) in enumerate(zip(items, sums)):
        bufs.append(pack_header(length, key, checksum, seg.id, offset + k * record))
        bufs.extend(pieces)
    total = len(items) * record
    try:
        if mid_write is not None:
            half = max(1, len(bufs) // 2)
            first = sum(len(b) for b in bufs[:half])
            done = pwritev_all(seg.fd, bufs[:half], offset, first)
            mid_write()
            return done == first and pwritev_all(seg.fd, bufs[half:], offset + done, total - first) == total - first
        return pwritev_all(seg.fd, bufs, offset, total) == total
    except OSError as exc:
        log.warning("file backend (segment): cannot write %s: %s", seg.name, exc)
        return False


def _write_then_checksum(seg: Segment, offset: int, item: WriteItem, length: int) -> bool:
    """One record whose checksum nobody computed yet: the page first, then its checksum, then
    the header. The checksum then reads bytes the copy just brought into the CPU cache (about
    40 % cheaper than reading them from memory first). No reader looks at a record before its
    journal entry, which comes after both writes, so the order is as safe as one ``pwritev``."""
    _, key, pieces = item
    try:
        if pwritev_all(seg.fd, pieces, offset + HEADER_SIZE, length) != length:
            return False
        header = pack_header(length, key, page_checksum(pieces), seg.id, offset)
        return pwritev_all(seg.fd, [header], offset, HEADER_SIZE) == HEADER_SIZE
    except OSError as exc:
        log.warning("file backend (segment): cannot write %s: %s", seg.name, exc)
        return False
