"""The format record that guards SGLang-scheme names, which carry no dtype, layout or TP size.

Under ``scheme: sglang`` a page's object names say only model, TP rank and PP rank, and
Mooncake checks nothing but sizes (a bf16 and an fp16 page, or a ``page_first`` and a
``page_first_direct`` page, have the same size and different bytes). So each namespace — one
per SGLang name suffix: prefix plus rank — carries one small reserved object, the *format
record* ``{prefix}_hicache-format_{rank}_k``, whose value names the page format
(``PageFormat.tag()``: kind, dtype, layers, heads, head dim, page size, byte order) and the
parts of the sharding SGLang's names leave out (TP size for MHA, PP size): see ``record_value``.

The rule (the same as hicache-file's ``sglang`` scheme manifest): **a namespace serves one
format; any other pool gets misses and refused writes, counted** as ``format_mismatch`` in
``get_stats()["errors"]`` (and logged once), never a wrong hit.

- **At attach** (``register_mem_pool_host``) the store reads the record. Absent: it writes its
  own (Mooncake keeps the first value of a key, so of two racing writers one wins) and reads
  it back. Naming another format: the store attaches, and every page is a miss and every
  write refused (the operator's fix: the writers' dtype, layout and TP size, another
  ``extra_backend_tag``, scheme ``hicache``, or ``clear()`` once the old pages may go).
- **While attached** every existence check carries the record's name in the same
  ``batch_is_exist`` call (no extra round trip), and its value is read again at most every
  ``RECHECK_S`` seconds. A record gone is claimed again before any page counts as present; a
  record that now names another format turns the store to misses (and back, should it name
  this format again).

The record is hard-pinned: Mooncake's eviction and ``remove_all`` leave it, so it disappears
only with a master restart (which drops every page with it) or an explicit removal:
hicache-mooncake's ``clear()`` (all pages, then this namespace's record) or a forced remove.
Removing the record by hand while pages of its format stay would let a node of another
format claim the namespace and read them; the nodes already attached would turn to misses.

SGLang's own ``MooncakeStore`` neither writes nor reads the record: an SGLang engine sharing
the namespace must run the same dtype and host layout as the hicache nodes (its pages carry no
format), which the record cannot check for it.
"""

from __future__ import annotations

import logging
import threading
import time

from hicache_core.spec.config import HiCacheStorageConfig
from hicache_mooncake.objects import ObjectClient

log = logging.getLogger(__name__)

#: The value's version prefix; bump it if the record's meaning changes.
RECORD_PREFIX = "hicache-mooncake-format/1 "
#: How long a present record is trusted before its value is read again.
RECHECK_S = 5.0


def record_value(page_format_tag: str, config: HiCacheStorageConfig) -> str:
    """What the record of a namespace holds: the page format and the sizes the names omit.

    SGLang names an MHA page by TP *rank* only, so a TP-1 and a TP-2 deployment both write
    ``..._0_k`` with other heads; MLA ranks all hold the same KV, so MLA records no TP size.
    """
    shard = f"pp{config.pp_size}" if config.is_mla_model else f"tp{config.tp_size}-pp{config.pp_size}"
    if config.attn_cp_size > 1:
        # SGLang's names carry no attention-CP rank: the ranks' disjoint slices would share
        # objects, so one CP rank owns the namespace and the others miss.
        shard += f"-cp{config.attn_cp_rank}of{config.attn_cp_size}"
    return f"{RECORD_PREFIX}{page_format_tag} {shard}"


class FormatRecord:
    """The format record of one namespace: claimed at attach, re-checked while attached."""

    def __init__(self, objects: ObjectClient, key: str, value: str) -> None:
        self.objects = objects
        self.key = key
        self.value = value.encode()
        self.mismatch: str | None = None
        self._lock = threading.Lock()
        self._checked_at = 0.0

    def _read(self) -> bytes | None:
        return self.objects.get_small(self.key)

    def _claim(self) -> str | None:
        """Make sure the record names our format; what it names instead, else None.

        A record that cannot be read or written (master down, no space) claims nothing and
        blocks nothing: it is tried again on the next existence check.
        """
        found = self._read()
        if found == b"":
            self.objects.put_small(self.key, self.value, pinned=True)
            found = self._read()
        self._checked_at = time.monotonic()
        if not found or found == self.value:
            return None
        return found.decode(errors="replace")

    def check(self) -> bool:
        """Claim or compare the record now; True when this store's pages may be served."""
        with self._lock:
            other = self._claim()
            if other != self.mismatch:
                if other is not None:
                    log.error(
                        "mooncake (scheme sglang): the namespace of %s holds pages of %r, this pool's are %r: "
                        "serving misses and refusing writes (format_mismatch). Use the writers' dtype, host "
                        "layout and TP size, another extra_backend_tag or scheme 'hicache', or clear() the old "
                        "pages", self.key, other, self.value.decode(),
                    )
                else:
                    log.warning("mooncake (scheme sglang): %s names this pool's format again", self.key)
                self.mismatch = other
        return other is None

    def recheck(self, present: int) -> bool:
        """After an existence check answered ``present`` for the record: True when I/O may go on."""
        if present != 1 or time.monotonic() - self._checked_at > RECHECK_S:
            return self.check()
        return self.mismatch is None

    def remove(self) -> bool:
        """Remove the record (after the namespace's pages are gone); True when it is gone."""
        with self._lock:
            return self.objects.remove_forced(self.key)

    def refuse(self, pages: int, what: str) -> None:
        """Count ``pages`` refused because the namespace holds another format."""
        self.objects.errors.add("format_mismatch", pages, f"{what}: namespace holds {self.mismatch!r}")
