"""The format record that guards SGLang-scheme names, which carry no dtype, layout or TP size.

Under ``scheme: sglang`` a page's object names say only model, TP rank and PP rank, and
Mooncake checks nothing but sizes (a bf16 and an fp16 page, or a ``page_first`` and a
``page_first_direct`` page, have the same size and different bytes). So each namespace — one
per SGLang name suffix: prefix plus rank — carries one small reserved object, the *format
record* ``{prefix}_hicache-format_{rank}_k``, whose value names the page format
(``PageFormat.tag()``: kind, dtype, layers, heads, head dim, page size, byte order).

The rule:

- **At attach** (``register_mem_pool_host``) the store reads the record. Absent: it writes its
  own (Mooncake keeps the first value of a key, so of two racing writers one wins) and reads
  it back. If the record names another format, attach is **refused** with ``LayoutError``
  (the operator must clear the namespace, pick another ``extra_backend_tag``, or use the
  ``hicache`` scheme); nothing is read or written.
- **While attached** every existence check carries the record's name in the same
  ``batch_is_exist`` call (no extra round trip), and its value is read again at most every
  ``RECHECK_S`` seconds. If the record has gone, it is claimed again before any page counts as
  present; if another format claimed the namespace meanwhile, every page is a **miss** and every write is refused
  from then on, each counted as ``format_mismatch`` in ``get_stats()["errors"]``.

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

from hicache_core.spec.errors import LayoutError
from hicache_mooncake.objects import ObjectClient

log = logging.getLogger(__name__)

#: The value's version prefix; bump it if the record's meaning changes.
RECORD_PREFIX = "hicache-mooncake-format/1 "
#: How long a present record is trusted before its value is read again.
RECHECK_S = 5.0


class FormatRecord:
    """The format record of one namespace: claimed at attach, re-checked while attached."""

    def __init__(self, objects: ObjectClient, key: str, page_format_tag: str) -> None:
        self.objects = objects
        self.key = key
        self.value = (RECORD_PREFIX + page_format_tag).encode()
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

    def claim_at_attach(self) -> None:
        """Refuse (``LayoutError``) when the namespace's record names another format."""
        other = self._claim()
        if other is not None:
            raise LayoutError(
                f"mooncake (scheme sglang): the pages under {self.key!r}'s namespace were written as "
                f"{other!r}, this host pool's pages are {self.value.decode()!r}; they would be read "
                "as wrong KV. Use the same dtype, host layout and TP size as the writers, or another "
                "extra_backend_tag, or scheme 'hicache'; or drop the old pages with clear() from a store "
                "opened with this config (it removes every page, then this record)"
            )
        self.mismatch = None

    def recheck(self, present: int) -> bool:
        """After an existence check answered ``present`` for the record: True when I/O may go on."""
        if present != 1 or time.monotonic() - self._checked_at > RECHECK_S:
            with self._lock:
                other = self._claim()
                if other is not None and self.mismatch is None:
                    log.error("mooncake: namespace of %s now holds format %r; serving misses", self.key, other)
                    self.mismatch = other
        return self.mismatch is None

    def remove(self) -> bool:
        """Remove the record (after the namespace's pages are gone); True when it is gone."""
        with self._lock:
            return self.objects.remove_forced(self.key)

    def refuse(self, pages: int, what: str) -> None:
        """Count ``pages`` refused because the namespace holds another format."""
        self.objects.errors.add("format_mismatch", pages, f"{what}: namespace holds {self.mismatch!r}")
